-- 010_queue: durable retry queue (transactional outbox) used by cbec_queue.
--
-- `jobs` holds every job; a job is enqueued by a plain INSERT in the caller's transaction, so it exists
-- iff the state change that caused it committed. `job_attempts` keeps the whole attempt history and is
-- never rewritten by a replay (replays start a new `replay` round). States:
--   queued  -> running (claimed by a worker, lease_until set)
--   running -> done | queued (retry, or lease expired, or released at shutdown) | dead
--   dead    -> queued (operator replay)

CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint     text        NOT NULL,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    dedupe_key   text,
    state        text        NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'done', 'dead')),
    -- Higher runs first.
    priority     integer     NOT NULL DEFAULT 0,
    -- Attempts started in the current replay round; a claim counts the attempt it starts.
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- NULL: the worker's retry policy for the endpoint decides.
    max_attempts integer     CHECK (max_attempts IS NULL OR max_attempts >= 1),
    -- How many times an operator replayed the job out of the dead letters.
    replays      integer     NOT NULL DEFAULT 0,
    run_after    timestamptz NOT NULL DEFAULT now(),
    locked_by    text,
    lease_until  timestamptz,
    last_error   text,
    -- 'permanent' | 'max_attempts' while state = 'dead'.
    dead_reason  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- A running job always has an owner and a lease; nothing else has one.
    CONSTRAINT jobs_lease_iff_running
        CHECK ((state = 'running') = (locked_by IS NOT NULL AND lease_until IS NOT NULL))
);

-- Claim for one endpoint / for a set of endpoints (the worker's LATERAL claim), in claim order.
CREATE INDEX jobs_queued_endpoint_idx ON jobs (endpoint, priority DESC, run_after, id) WHERE state = 'queued';
-- Claim from any endpoint.
CREATE INDEX jobs_queued_idx ON jobs (priority DESC, run_after, id) WHERE state = 'queued';
-- Next due time per endpoint (worker sleeps until then) and queue lag for stats.
CREATE INDEX jobs_queued_due_idx ON jobs (endpoint, run_after) WHERE state = 'queued';
-- Reaper: leases that ran out.
CREATE INDEX jobs_running_lease_idx ON jobs (lease_until) WHERE state = 'running';
-- Dead-letter listing and purge of old finished jobs.
CREATE INDEX jobs_dead_idx ON jobs (endpoint, finished_at DESC) WHERE state = 'dead';
CREATE INDEX jobs_done_idx ON jobs (finished_at) WHERE state = 'done';
-- Deduplication only while the job is live: once done or dead the same key may be enqueued again.
CREATE UNIQUE INDEX jobs_dedupe_live_uq ON jobs (endpoint, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running');

CREATE TABLE job_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      bigint      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- jobs.replays when the attempt ran: attempt numbers restart after a replay.
    replay      integer     NOT NULL DEFAULT 0,
    -- 1-based attempt number within the replay round; 0 for the 'replayed' marker.
    attempt     integer     NOT NULL,
    worker_id   text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- NULL while the attempt runs.
    outcome     text CHECK (outcome IN ('ok', 'transient', 'permanent', 'lease_expired', 'replayed')),
    error       text,
    duration_ms integer,
    CONSTRAINT job_attempts_round_uq UNIQUE (job_id, replay, attempt)
);
