-- 080_kept_counts: counts that readers would otherwise take from whole tables, kept as the rows change.
--
--   shipments  (k1 state, k2 customs_status): the console's live counts (every second while a page is open
--              and messages arrive) and each /metrics scrape; ~0.2 s to count at a million shipments.
--   jobs_done  (k1 endpoint): delivered jobs still kept, for cbec_queue.stats; done jobs pile up until purged,
--              while the live states are read through their partial indexes.
--
-- Statement-level triggers keep them in the same transaction as every change of a row. Each database session
-- counts in rows of its own (slot = its backend pid), so concurrent transactions never wait on a shared counter
-- row (nor deadlock on one); a reader sums the slots. kept_counts_fold() folds the rows of sessions that ended
-- into slot 0 (cbec serve and cbec worker call it at start), so the rows stay few. TRUNCATE (no row triggers)
-- empties a table's counts.

CREATE TABLE kept_counts (
    counter text   NOT NULL,
    k1      text   NOT NULL,
    k2      text   NOT NULL DEFAULT '',
    slot    int    NOT NULL,  -- pg_backend_pid() of the session that counted; 0: folded
    n       bigint NOT NULL,
    PRIMARY KEY (counter, k1, k2, slot)
);

-- Adds deltas (k1s[i], k2s[i], ds[i]) of one counter to this session's slot, in key order (one session touches
-- only its own rows, but keep it deadlock-free regardless); keys whose deltas sum to 0 write nothing.
CREATE FUNCTION kept_counts_add(counter text, k1s text[], k2s text[], ds bigint[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO kept_counts AS c (counter, k1, k2, slot, n)
    SELECT counter, x.k1, x.k2, pg_backend_pid(), sum(x.d)
      FROM unnest(k1s, k2s, ds) AS x(k1, k2, d)
     GROUP BY 1, 2, 3 HAVING sum(x.d) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (counter, k1, k2, slot) DO UPDATE SET n = c.n + EXCLUDED.n
$$;

-- shipments: every row counts. One function for the three events: it reads the transition tables its event has.
CREATE FUNCTION kept_counts_shipments() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k1s text[] := '{}';
    k2s text[] := '{}';
    ds bigint[] := '{}';
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM kept_counts WHERE counter = 'shipments';
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT k1s || array_agg(x.state), k2s || array_agg(x.customs_status), ds || array_agg(x.n) INTO k1s, k2s, ds
          FROM (SELECT r.state, r.customs_status, count(*) AS n FROM new_rows AS r GROUP BY 1, 2) AS x;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT k1s || array_agg(x.state), k2s || array_agg(x.customs_status), ds || array_agg(-x.n) INTO k1s, k2s, ds
          FROM (SELECT r.state, r.customs_status, count(*) AS n FROM old_rows AS r GROUP BY 1, 2) AS x;
    END IF;
    IF cardinality(k1s) > 0 THEN
        PERFORM kept_counts_add('shipments', k1s, k2s, ds);
    END IF;
    RETURN NULL;
END
$$;

-- jobs: the done ones only (claims, heartbeats and retries change no done row, and write nothing).
CREATE FUNCTION kept_counts_jobs_done() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k1s text[] := '{}';
    ds bigint[] := '{}';
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM kept_counts WHERE counter = 'jobs_done';
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT k1s || array_agg(x.endpoint), ds || array_agg(x.n) INTO k1s, ds
          FROM (SELECT r.endpoint, count(*) AS n FROM new_rows AS r WHERE r.state = 'done' GROUP BY 1) AS x;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT k1s || array_agg(x.endpoint), ds || array_agg(-x.n) INTO k1s, ds
          FROM (SELECT r.endpoint, count(*) AS n FROM old_rows AS r WHERE r.state = 'done' GROUP BY 1) AS x;
    END IF;
    IF cardinality(k1s) > 0 THEN
        PERFORM kept_counts_add('jobs_done', k1s, array_fill(''::text, ARRAY[cardinality(k1s)]), ds);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER kept_counts_ins AFTER INSERT ON shipments REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_shipments();
CREATE TRIGGER kept_counts_upd AFTER UPDATE ON shipments REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_shipments();
CREATE TRIGGER kept_counts_del AFTER DELETE ON shipments REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_shipments();
CREATE TRIGGER kept_counts_trunc AFTER TRUNCATE ON shipments
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_shipments();

CREATE TRIGGER kept_counts_ins AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_jobs_done();
CREATE TRIGGER kept_counts_upd AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_jobs_done();
CREATE TRIGGER kept_counts_del AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_jobs_done();
CREATE TRIGGER kept_counts_trunc AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION kept_counts_jobs_done();

-- What is stored so far (the triggers' locks on both tables keep writers out until this commits).
INSERT INTO kept_counts (counter, k1, k2, slot, n)
SELECT 'shipments', state, customs_status, 0, count(*) FROM shipments GROUP BY state, customs_status
UNION ALL
SELECT 'jobs_done', endpoint, '', 0, count(*) FROM jobs WHERE state = 'done' GROUP BY endpoint;

-- Fold the slots of sessions that ended into slot 0; returns how many rows were folded. A new session that
-- reuses a pid waits for the fold (row locks) and then counts in a fresh row.
CREATE FUNCTION kept_counts_fold() RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM kept_counts AS c
         WHERE c.slot <> 0 AND NOT EXISTS (SELECT FROM pg_stat_activity AS a WHERE a.pid = c.slot)
        RETURNING c.counter, c.k1, c.k2, c.n
    ), folded AS (
        INSERT INTO kept_counts AS c (counter, k1, k2, slot, n)
        SELECT g.counter, g.k1, g.k2, 0, sum(g.n) FROM gone AS g GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (counter, k1, k2, slot) DO UPDATE SET n = c.n + EXCLUDED.n
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
