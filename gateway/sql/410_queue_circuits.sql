-- The circuit breakers that are not closed, of every worker (cbec serve's and each cbec worker's: each has its own),
-- so that GET /v1/queue, the console and /metrics — served by cbec serve alone — show a dedicated worker's open
-- circuit too. Written by the worker on each change, refreshed (seen_at) while not closed; a worker's rows go when it
-- stops, and rows not refreshed for a minute (a killed worker's) are not read.
CREATE TABLE IF NOT EXISTS queue_circuits (
    worker_id  text        NOT NULL,
    endpoint   text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('open', 'half_open')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker_id, endpoint)
);
