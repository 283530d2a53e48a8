-- 060_job_ordering: per-key ordering of queue jobs (cbec_queue).
--
-- A job may carry ordering keys (NULL: unordered; an empty array is stored as NULL). A job is not claimable
-- while an earlier job (smaller id) of the same endpoint sharing any of its keys is still queued (due or
-- waiting for a retry) or running. Done and dead jobs do not hold anything back: a dead letter lets the
-- later jobs of its keys go (replaying it afterwards cannot put it back in front of them).
-- The gateway gives every declaration job the business keys of its message's documents
-- (gateway.forward.ordering_key), so that a change or a withdrawal never overtakes its original.

ALTER TABLE jobs ADD COLUMN ordering_keys text[]
    CHECK (ordering_keys IS NULL OR cardinality(ordering_keys) > 0);

-- "Is an earlier job of one of these keys still live?": the claim statements' NOT EXISTS probe (one per
-- candidate job that has keys) and the wake-up at a keyed job's end. Only live jobs are indexed, so the
-- index stays as small as the backlog. fastupdate off: with the pending list every probe would also scan
-- the entries not yet merged, and the claim is the hot path; inserts pay instead (a few keys per job).
CREATE INDEX jobs_ordering_live_idx ON jobs USING gin (ordering_keys) WITH (fastupdate = off)
    WHERE state IN ('queued', 'running') AND ordering_keys IS NOT NULL;
