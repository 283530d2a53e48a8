"""Every SQL statement of the queue, one constant each; only store.py executes them.

Parameters are asyncpg positional ($n) and listed above each statement. Times are the database's clock
(now()), never the workers', so leases and run_after agree across machines.
"""

from __future__ import annotations

#: How a planned statement's transaction begins: generic plans, and the full-scan alternatives off. The claim
#: statements are written as index probes (the partial indexes, one GIN probe per keyed job), but statistics of a
#: backlog made of keyed jobs only make the planner prefer a scan of the whole queue per claim; with these
#: settings the probes are the only plans left, whatever the statistics (and no claim is planned anew each
#: time). gateway.db opens its hot transactions with this same text.
BEGIN_PLANNED = (
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;"
    " SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
)


# Columns of jobs that make a Job. payload travels as text both ways (`$n::text::jsonb` in, `::text` out) so
# the statements work on connections with and without a jsonb codec (gateway.db installs one).
_JOB_COLUMNS = (
    "id, endpoint, kind, payload::text AS payload, dedupe_key, priority, attempts, max_attempts, replays, "
    "run_after, created_at, locked_by, lease_until, ordering_keys"
)


def _not_held_back(j: str) -> str:
    """True when job `j` has no ordering keys, or no earlier job (smaller id) of its endpoint sharing one of them
    is live (queued, due or waiting for a retry, or running). Dead and done jobs hold nothing back.

    One probe of the partial GIN index jobs_ordering_live_idx per job with keys. OFFSET 0 keeps the sub-select
    a correlated sub-plan (a semi-join would let the planner read every live keyed job once and hash them).
    ``e.id + 0``: with statistics of a queue made of keyed jobs only, the planner otherwise prefers walking the
    primary key over every earlier job (measured: 3,000 rows read per probe, ~10 ms per claim at a 3,000-job
    backlog); the expression leaves the GIN probe as the only index path."""
    return f"""({j}.ordering_keys IS NULL OR NOT EXISTS (
        SELECT FROM jobs AS e
         WHERE e.ordering_keys && {j}.ordering_keys AND e.state IN ('queued', 'running')
           AND e.ordering_keys IS NOT NULL AND e.endpoint = {j}.endpoint AND e.id + 0 < {j}.id
        OFFSET 0))"""


# Insert one job in the caller's transaction and wake workers (NOTIFY is delivered at commit, never on
# rollback; PostgreSQL folds identical notifications of one transaction into one).
# $1 endpoint, $2 kind, $3 payload (json text), $4 dedupe_key, $5 run_after|NULL, $6 priority, $7 max_attempts|NULL,
# $8 ordering_keys text[]|NULL (empty: none)
ENQUEUE = """
WITH ins AS (
    INSERT INTO jobs (endpoint, kind, payload, dedupe_key, run_after, priority, max_attempts, ordering_keys)
    VALUES ($1, $2, $3::text::jsonb, $4, COALESCE($5::timestamptz, now()), $6, $7,
            CASE WHEN cardinality($8::text[]) > 0 THEN $8::text[] END)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, pg_notify('cbec_jobs', $1::text) FROM ins
"""


def _claim_tail(worker: str, lease: str) -> str:
    """The end shared by the claim statements: flip the picked rows to running under a lease and open their
    attempt rows in the statement that locked them, so there is no read-then-write window. The picked ids go in
    as an array (one primary-key probe each); a join with them could be planned as a scan of the whole queue."""
    return f"""
claimed AS (
    UPDATE jobs j
    SET state = 'running', attempts = j.attempts + 1, locked_by = {worker},
        lease_until = now() + make_interval(secs => {lease}), updated_at = now()
    WHERE j.id = ANY (ARRAY(SELECT p.id FROM picked p))
    RETURNING j.*
), started AS (
    INSERT INTO job_attempts (job_id, replay, attempt, worker_id, started_at)
    SELECT id, replays, attempts, {worker}, now() FROM claimed
)
SELECT {_JOB_COLUMNS} FROM claimed ORDER BY priority DESC, run_after, id
"""


# Claim up to n due jobs per endpoint (the worker passes only endpoints with free capacity); a job held back by
# an earlier live job of one of its ordering keys is passed over. Two claimers at once stay apart: a claimer
# sees the earlier job queued (its own statement's snapshot) or running, or locked (SKIP LOCKED), never gone.
# $1 endpoints text[], $2 counts int[], $3 worker_id, $4 lease seconds
CLAIM_PER_ENDPOINT = f"""
WITH wanted AS (
    SELECT w.endpoint, w.n FROM unnest($1::text[], $2::int[]) AS w(endpoint, n) WHERE w.n > 0
), picked AS MATERIALIZED (
    SELECT c.id
    FROM wanted w
    CROSS JOIN LATERAL (
        SELECT j.id FROM jobs j
        WHERE j.state = 'queued' AND j.endpoint = w.endpoint AND j.run_after <= now()
          AND {_not_held_back("j")}
        ORDER BY j.priority DESC, j.run_after, j.id
        LIMIT w.n
        FOR UPDATE SKIP LOCKED
    ) c
), {_claim_tail("$3::text", "$4::float8")}"""

#: How many of an endpoint's due jobs, in claim order, its half-open circuit's probe is chosen from (CLAIM_PROBE).
PROBE_WINDOW = 100

# Claim the probe of an endpoint whose circuit is half open: of its first $2 due jobs in claim order (ordering keys
# as in CLAIM_PER_ENDPOINT), the one tried least. The first due is most often a job whose own failures opened the
# circuit (its retry came due while nothing was sent): probing with it again and again, one message the endpoint
# keeps failing held the circuit open for every other job; a fresh job tests the endpoint. The window's rows are
# locked for the statement's instant only.
# $1 endpoint, $2 window, $3 worker_id, $4 lease seconds
CLAIM_PROBE = f"""
WITH head AS MATERIALIZED (
    SELECT j.id, j.attempts, j.priority, j.run_after FROM jobs j
    WHERE j.state = 'queued' AND j.endpoint = $1 AND j.run_after <= now() AND {_not_held_back("j")}
    ORDER BY j.priority DESC, j.run_after, j.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), picked AS MATERIALIZED (
    SELECT h.id FROM head h ORDER BY h.attempts, h.priority DESC, h.run_after, h.id LIMIT 1
), {_claim_tail("$3::text", "$4::float8")}"""

# Claim up to n due jobs of any endpoint (ordering keys as in CLAIM_PER_ENDPOINT).
# $1 limit, $2 worker_id, $3 lease seconds
CLAIM_ANY = f"""
WITH picked AS MATERIALIZED (
    SELECT j.id FROM jobs j
    WHERE j.state = 'queued' AND j.run_after <= now() AND {_not_held_back("j")}
    ORDER BY j.priority DESC, j.run_after, j.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), {_claim_tail("$2::text", "$3::float8")}"""

# Close the current attempt and move the job on; fenced by (id, locked_by, attempts) so a worker whose
# lease expired cannot overwrite the next claim's work. Returns 1 row when it applied, 0 otherwise.
# A job with ordering keys that ends (done or dead) wakes the endpoint's workers at commit: jobs it held back
# may go now, and workers of other processes would otherwise only see them at their next poll. (Always, not
# only when a held-back job is seen: one enqueued by a transaction that commits meanwhile would be missed.)
# $1 id, $2 worker_id, $3 attempts, $4 new state (done|queued|dead), $5 retry delay seconds,
# $6 last_error, $7 dead_reason, $8 attempt outcome, $9 attempt error detail, $10 duration_ms
FINISH = """
WITH j AS (
    UPDATE jobs
    SET state = $4::text,
        locked_by = NULL, lease_until = NULL,
        run_after = CASE WHEN $4::text = 'queued' THEN now() + make_interval(secs => $5) ELSE run_after END,
        finished_at = CASE WHEN $4::text = 'queued' THEN NULL ELSE now() END,
        last_error = $6, dead_reason = $7, updated_at = now()
    WHERE id = $1 AND state = 'running' AND locked_by = $2 AND attempts = $3
    RETURNING id, replays, attempts, endpoint, state, ordering_keys IS NOT NULL AS ordered
), a AS (
    UPDATE job_attempts ja
    SET finished_at = now(), outcome = $8, error = $9, duration_ms = $10
    FROM j
    WHERE ja.job_id = j.id AND ja.replay = j.replays AND ja.attempt = j.attempts
)
SELECT id, CASE WHEN ordered AND state <> 'queued' THEN pg_notify('cbec_jobs', endpoint) END AS woken FROM j
"""

# FINISH to done for many claims of a handler's transaction (store.mark_done_many), each fenced by its own
# (id, locked_by, attempts); returns the ids whose claim held. Each claim is read by its primary key and
# row-locked (a probe whatever the plan: a `state = 'running'` filter on the UPDATE would let the planner
# scan the running-lease index instead), fenced, then finished by id. Pass the ids sorted: rows are locked
# in that order. Jobs with ordering keys wake their endpoint's workers at commit (see FINISH).
# $1 ids bigint[], $2 attempts int[], $3 worker ids text[]
FINISH_DONE_MANY = """
WITH held AS MATERIALIZED (
    SELECT j.id, j.replays, j.attempts
      FROM unnest($1::bigint[], $2::int[], $3::text[]) AS c(id, attempts, locked_by),
           LATERAL (SELECT * FROM jobs AS j WHERE j.id = c.id OFFSET 0 FOR UPDATE) AS j
     WHERE j.state = 'running' AND j.locked_by = c.locked_by AND j.attempts = c.attempts
), j AS (
    UPDATE jobs
    SET state = 'done', locked_by = NULL, lease_until = NULL, finished_at = now(),
        last_error = NULL, dead_reason = NULL, updated_at = now()
    WHERE jobs.id = ANY (ARRAY(SELECT h.id FROM held AS h))
    RETURNING jobs.id, jobs.endpoint, jobs.ordering_keys IS NOT NULL AS ordered
), a AS (
    UPDATE job_attempts ja
    -- the attempt's time from its claim to this commit: the handler that records many at once has no clock of
    -- each (mark_done's duration_ms is the worker's; this one also counts the wait for the batch's commit)
    SET finished_at = now(), outcome = 'ok', error = NULL,
        duration_ms = greatest(0, round(extract(epoch FROM clock_timestamp() - ja.started_at) * 1000))::int
    FROM held AS h
    WHERE ja.job_id = ANY (ARRAY(SELECT h.id FROM held AS h)) AND ja.job_id = h.id AND ja.replay = h.replays
      AND ja.attempt = h.attempts
)
SELECT id, CASE WHEN ordered THEN pg_notify('cbec_jobs', endpoint) END AS woken FROM j
"""

# Who holds a job now (explains a FINISH that applied to no row).
# $1 id
JOB_STATE = "SELECT state, locked_by, attempts FROM jobs WHERE id = $1"

# Extend the leases of jobs this worker still runs; returns the ids it still holds.
# $1 ids bigint[], $2 worker_id, $3 lease seconds
HEARTBEAT = """
UPDATE jobs
SET lease_until = now() + make_interval(secs => $3), updated_at = now()
WHERE id = ANY($1::bigint[]) AND state = 'running' AND locked_by = $2
RETURNING id
"""

# Give claimed jobs back without counting the attempt (graceful shutdown): the attempt row is removed.
# $1 ids bigint[], $2 attempts int[], $3 worker_id
RELEASE = """
WITH mine AS (
    SELECT r.id, r.attempts FROM unnest($1::bigint[], $2::int[]) AS r(id, attempts)
), j AS (
    UPDATE jobs
    SET state = 'queued', attempts = jobs.attempts - 1, locked_by = NULL, lease_until = NULL, updated_at = now()
    FROM mine
    WHERE jobs.id = mine.id AND jobs.attempts = mine.attempts AND jobs.state = 'running' AND jobs.locked_by = $3
    RETURNING jobs.id, jobs.endpoint, jobs.replays, mine.attempts AS attempt
), d AS (
    DELETE FROM job_attempts ja USING j
    WHERE ja.job_id = j.id AND ja.replay = j.replays AND ja.attempt = j.attempt
)
SELECT id, pg_notify('cbec_jobs', endpoint) FROM j
"""

# Give one claimed job back untried, due after a delay (Deferred): its attempt not counted and its row removed, as
# RELEASE does; last_error says why it waits. Fenced as FINISH is; returns 1 row when it applied.
# $1 id, $2 worker_id, $3 attempts, $4 delay seconds, $5 last_error
DEFER = """
WITH j AS (
    UPDATE jobs
    SET state = 'queued', attempts = attempts - 1, locked_by = NULL, lease_until = NULL,
        run_after = now() + make_interval(secs => $4), last_error = $5, updated_at = now()
    WHERE id = $1 AND state = 'running' AND locked_by = $2 AND attempts = $3
    RETURNING id, replays
), d AS (
    DELETE FROM job_attempts ja USING j
    WHERE ja.job_id = j.id AND ja.replay = j.replays AND ja.attempt = $3
)
SELECT id FROM j
"""

# Put jobs whose lease ran out (their worker died or hung) back to queued, or to dead when they have used
# every attempt (a job that kills its worker each time must not loop forever). Any worker may run this;
# SKIP LOCKED keeps concurrent reapers apart. Wakes the endpoint's workers for a job queued again, and for a
# job with ordering keys gone dead (the jobs it held back may go).
# $1 endpoints text[], $2 max_attempts int[] (the reaping worker's policies), $3 default max_attempts|NULL,
# $4 limit
REAP = """
WITH expired AS MATERIALIZED (
    SELECT j.id, j.endpoint, j.replays, j.attempts, j.locked_by,
           COALESCE(j.attempts >= COALESCE(j.max_attempts, m.max_attempts, $3::int), false) AS exhausted
    FROM jobs j
    LEFT JOIN unnest($1::text[], $2::int[]) AS m(endpoint, max_attempts) ON m.endpoint = j.endpoint
    WHERE j.state = 'running' AND j.lease_until < now()
    ORDER BY j.lease_until
    LIMIT $4
    FOR UPDATE OF j SKIP LOCKED
), upd AS (
    UPDATE jobs j
    SET state = CASE WHEN e.exhausted THEN 'dead' ELSE 'queued' END,
        locked_by = NULL, lease_until = NULL, run_after = now(), updated_at = now(),
        finished_at = CASE WHEN e.exhausted THEN now() END,
        dead_reason = CASE WHEN e.exhausted THEN 'max_attempts' END,
        last_error = 'lease expired (worker ' || e.locked_by || ')'
    FROM expired e
    WHERE j.id = e.id
    RETURNING j.id, j.endpoint, j.kind, j.payload, j.last_error, j.state, j.attempts, e.locked_by,
              j.ordering_keys IS NOT NULL AS ordered
), att AS (
    UPDATE job_attempts ja
    SET finished_at = now(), outcome = 'lease_expired', error = 'lease expired',
        duration_ms = (EXTRACT(EPOCH FROM now() - ja.started_at) * 1000)::int
    FROM expired e
    WHERE ja.job_id = e.id AND ja.replay = e.replays AND ja.attempt = e.attempts
)
SELECT u.id, u.endpoint, u.kind, u.payload, u.last_error, u.state, u.attempts, u.locked_by,
       CASE WHEN u.state = 'queued' OR u.ordered THEN pg_notify('cbec_jobs', u.endpoint) END AS notified
FROM upd u
"""

# Queued jobs ($1 ids) waiting for their next try become due now, and their workers are woken (at commit).
HASTEN = """
UPDATE jobs SET run_after = now(), updated_at = now()
 WHERE id = ANY($1::bigint[]) AND state = 'queued' AND run_after > now()
RETURNING id, pg_notify('cbec_jobs', endpoint)
"""

# Move dead jobs back to queued with attempts reset; history stays and a 'replayed' marker opens the new
# round. A dead job whose dedupe key is live again (re-enqueued meanwhile) is left dead: the live job
# supersedes it; of several dead jobs sharing a key only the newest is replayed.
# $1 ids bigint[]|NULL, $2 endpoint|NULL, $3 kind|NULL, $4 note
REPLAY = """
WITH cand AS MATERIALIZED (
    SELECT id, endpoint, dedupe_key FROM jobs
    WHERE state = 'dead'
      AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
      AND ($2::text IS NULL OR endpoint = $2::text)
      AND ($3::text IS NULL OR kind = $3::text)
    ORDER BY id
    FOR UPDATE
), chosen AS (
    SELECT id FROM cand WHERE dedupe_key IS NULL
    UNION ALL
    SELECT max(c.id) FROM cand c
    WHERE c.dedupe_key IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM jobs l
          WHERE l.endpoint = c.endpoint AND l.dedupe_key = c.dedupe_key AND l.state IN ('queued', 'running'))
    GROUP BY c.endpoint, c.dedupe_key
), upd AS (
    UPDATE jobs j
    SET state = 'queued', attempts = 0, replays = j.replays + 1, run_after = now(),
        finished_at = NULL, dead_reason = NULL, updated_at = now()
    FROM chosen c
    WHERE j.id = c.id
    RETURNING j.id, j.endpoint, j.kind, j.payload, j.replays
), marker AS (
    INSERT INTO job_attempts (job_id, replay, attempt, started_at, finished_at, outcome, error)
    SELECT id, replays, 0, now(), now(), 'replayed', $4::text FROM upd
)
SELECT id, endpoint, kind, payload, pg_notify('cbec_jobs', endpoint) FROM upd ORDER BY id
"""

# Seconds until the next queued job of these endpoints is due (negative: overdue; NULL: none queued), leaving
# out the jobs held back by an earlier live job of their ordering keys: they are not claimable when due, and
# counting them would make a worker poll without rest while their predecessor runs or waits for its retry.
# What frees them wakes the worker instead: the predecessor's own due time (counted here), its end (FINISH
# notifies, and the worker running it turns at once), or its lease running out (REAP notifies). Per endpoint
# the queued jobs are read in due order up to the first one not held back (jobs_queued_due_idx), so the cost
# is that of the held-back jobs due before it, as in the claims, not of the whole backlog.
# $1 endpoints text[]
NEXT_DUE = f"""
SELECT EXTRACT(EPOCH FROM min(n.run_after) - clock_timestamp())::float8
FROM unnest($1::text[]) AS w(endpoint),
     LATERAL (SELECT j.run_after FROM jobs AS j
               WHERE j.state = 'queued' AND j.endpoint = w.endpoint AND {_not_held_back("j")}
               ORDER BY j.run_after LIMIT 1) AS n
"""

# Per-endpoint jobs by state and queue age: the live states read through their partial indexes (the cost
# follows the backlog), done jobs from the counts triggers keep (kept_counts, gateway/sql/080_kept_counts.sql): never
# the whole history.
STATS = """
SELECT endpoint, sum(queued)::bigint AS queued, sum(due)::bigint AS due, sum(running)::bigint AS running,
       sum(done)::bigint AS done, sum(dead)::bigint AS dead,
       EXTRACT(EPOCH FROM now() - min(oldest))::float8 AS oldest_queued_age_s
FROM (
    SELECT endpoint, count(*) AS queued, count(*) FILTER (WHERE run_after <= now()) AS due, 0 AS running,
           0 AS done, 0 AS dead, min(created_at) AS oldest
      FROM jobs WHERE state = 'queued' GROUP BY endpoint
    UNION ALL
    SELECT endpoint, 0, 0, count(*), 0, 0, NULL::timestamptz FROM jobs WHERE state = 'running' GROUP BY endpoint
    UNION ALL
    SELECT k1, 0, 0, 0, sum(n), 0, NULL::timestamptz FROM kept_counts WHERE counter = 'jobs_done' GROUP BY k1
    UNION ALL
    SELECT endpoint, 0, 0, 0, 0, count(*), NULL::timestamptz FROM jobs WHERE state = 'dead' GROUP BY endpoint
) AS per_state
GROUP BY endpoint
HAVING sum(queued) + sum(running) + sum(done) + sum(dead) > 0
ORDER BY endpoint
"""

_JOB_DETAIL_COLUMNS = (
    "id, endpoint, kind, payload::text AS payload, dedupe_key, state, priority, attempts, max_attempts, replays, "
    "run_after, locked_by, lease_until, last_error, dead_reason, created_at, updated_at, finished_at, "
    "coalesce(ordering_keys, '{}') AS ordering_keys"
)

# Dead letters, newest first.
# $1 endpoint|NULL, $2 limit, $3 offset
DEAD_LETTERS = f"""
SELECT {_JOB_DETAIL_COLUMNS} FROM jobs
WHERE state = 'dead' AND ($1::text IS NULL OR endpoint = $1::text)
ORDER BY finished_at DESC, id DESC
LIMIT $2 OFFSET $3
"""

# One job by id.
# $1 id
GET_JOB = f"SELECT {_JOB_DETAIL_COLUMNS} FROM jobs WHERE id = $1"

# Attempt history of some jobs, in the order things happened.
# $1 job ids bigint[]
HISTORY = """
SELECT job_id, replay, attempt, worker_id, started_at, finished_at, outcome, error, duration_ms
FROM job_attempts
WHERE job_id = ANY($1::bigint[])
ORDER BY job_id, replay, attempt, id
"""

# Delete done jobs (and, by cascade, their attempts) finished longer ago than $1 seconds, oldest first, at
# most $2 of them (NULL: all). Found through jobs_done_idx (finished_at): the cost follows what is deleted.
PURGE_DONE = """
WITH d AS (
    DELETE FROM jobs
     WHERE id = ANY (ARRAY(SELECT o.id FROM jobs AS o
                            WHERE o.state = 'done' AND o.finished_at < now() - make_interval(secs => $1)
                            ORDER BY o.finished_at LIMIT $2))
       AND state = 'done'
    RETURNING 1
)
SELECT count(*) FROM d
"""


# The circuits of a worker that are not closed (queue_circuits): $1 worker_id, $2 endpoints, $3 their states. Rows of
# the worker not named go (closed again); a state unchanged keeps its changed_at, every row its seen_at renewed.
PUBLISH_CIRCUITS = """
WITH gone AS (
    DELETE FROM queue_circuits WHERE worker_id = $1 AND NOT (endpoint = ANY ($2::text[]))
)
INSERT INTO queue_circuits (worker_id, endpoint, state)
SELECT $1, e, s FROM unnest($2::text[], $3::text[]) AS x(e, s)
ON CONFLICT (worker_id, endpoint) DO UPDATE
SET changed_at = CASE WHEN queue_circuits.state = EXCLUDED.state THEN queue_circuits.changed_at ELSE now() END,
    state = EXCLUDED.state, seen_at = now()
"""

# The circuits not closed of the workers but $2 (this process's, whose breakers are read live), seen within $1 seconds
# (a killed worker's rows are not read), per endpoint.
SHARED_CIRCUITS = """
SELECT endpoint, array_agg(state) AS states FROM queue_circuits
 WHERE seen_at > now() - make_interval(secs => $1) AND NOT (worker_id = ANY ($2::text[])) GROUP BY endpoint
"""
