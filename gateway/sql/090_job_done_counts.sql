-- 090_job_done_counts: delivered (done) jobs per endpoint, kept as jobs change.
--
-- cbec_queue.stats reads the live states through their partial indexes; done jobs are history that piles up
-- (until purged), so counting them meant reading the whole table at every console poll and /metrics scrape.
-- Statement-level triggers keep the count in the same transaction as every change of a job, as
-- 080_shipment_counts does for shipments: one row per database session (slot = its backend pid), so workers
-- finishing jobs at once never wait on a shared counter; job_done_counts_fold() folds the rows of ended
-- sessions into slot 0 (cbec serve and cbec worker call it at start).

CREATE TABLE job_done_counts (
    endpoint text   NOT NULL,
    slot     int    NOT NULL,  -- pg_backend_pid() of the session that counted; 0: folded
    n        bigint NOT NULL,
    PRIMARY KEY (endpoint, slot)
);

CREATE FUNCTION job_done_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_done_counts AS c (endpoint, slot, n)
    SELECT r.endpoint, pg_backend_pid(), count(*) FROM new_rows AS r WHERE r.state = 'done' GROUP BY 1 ORDER BY 1
    ON CONFLICT (endpoint, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

-- Claims, heartbeats and retries change no done row: the filter leaves nothing to write for them.
CREATE FUNCTION job_done_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_done_counts AS c (endpoint, slot, n)
    SELECT x.endpoint, pg_backend_pid(), sum(x.d)
      FROM (SELECT r.endpoint, 1 AS d FROM new_rows AS r WHERE r.state = 'done'
            UNION ALL
            SELECT r.endpoint, -1 AS d FROM old_rows AS r WHERE r.state = 'done') AS x
     GROUP BY 1 HAVING sum(x.d) <> 0 ORDER BY 1
    ON CONFLICT (endpoint, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION job_done_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_done_counts AS c (endpoint, slot, n)
    SELECT r.endpoint, pg_backend_pid(), -count(*) FROM old_rows AS r WHERE r.state = 'done' GROUP BY 1 ORDER BY 1
    ON CONFLICT (endpoint, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION job_done_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_done_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER job_done_counts_ins AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_done_counts_inserted();
CREATE TRIGGER job_done_counts_upd AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_done_counts_updated();
CREATE TRIGGER job_done_counts_del AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_done_counts_deleted();
CREATE TRIGGER job_done_counts_trunc AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_done_counts_truncated();

INSERT INTO job_done_counts (endpoint, slot, n)
SELECT endpoint, 0, count(*) FROM jobs WHERE state = 'done' GROUP BY endpoint;

CREATE FUNCTION job_done_counts_fold() RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM job_done_counts AS c
         WHERE c.slot <> 0 AND NOT EXISTS (SELECT FROM pg_stat_activity AS a WHERE a.pid = c.slot)
        RETURNING c.endpoint, c.n
    ), folded AS (
        INSERT INTO job_done_counts AS c (endpoint, slot, n)
        SELECT g.endpoint, 0, sum(g.n) FROM gone AS g GROUP BY 1 ORDER BY 1
        ON CONFLICT (endpoint, slot) DO UPDATE SET n = c.n + EXCLUDED.n
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
