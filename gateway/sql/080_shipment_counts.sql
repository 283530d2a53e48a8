-- 080_shipment_counts: shipments by reconciliation state and customs status, kept as they change.
--
-- The console's live counts (every second while a page is open and messages arrive) and each /metrics
-- scrape used to count the whole table: ~0.2 s at a million shipments, and growing. Statement-level
-- triggers now keep the counts in the same transaction as every change of a shipment. Each database
-- session counts in a row of its own (slot = its backend pid), so concurrent transactions never wait on
-- one another's counter rows (nor deadlock on them); a reader sums the slots. shipment_counts_fold()
-- folds the slots of sessions that ended into slot 0 (cbec serve calls it at start), so the rows stay
-- few. TRUNCATE (no row triggers) empties the counts too.

CREATE TABLE shipment_counts (
    state          text   NOT NULL,
    customs_status text   NOT NULL,
    slot           int    NOT NULL,  -- pg_backend_pid() of the session that counted; 0: folded
    n              bigint NOT NULL,
    PRIMARY KEY (state, customs_status, slot)
);

-- In key order (ORDER BY): one session touches only its own rows, but keep it deadlock-free regardless.
CREATE FUNCTION shipment_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shipment_counts AS c (state, customs_status, slot, n)
    SELECT r.state, r.customs_status, pg_backend_pid(), count(*) FROM new_rows AS r GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (state, customs_status, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION shipment_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shipment_counts AS c (state, customs_status, slot, n)
    SELECT x.state, x.customs_status, pg_backend_pid(), sum(x.d)
      FROM (SELECT r.state, r.customs_status, 1 AS d FROM new_rows AS r
            UNION ALL
            SELECT r.state, r.customs_status, -1 AS d FROM old_rows AS r) AS x
     GROUP BY 1, 2 HAVING sum(x.d) <> 0 ORDER BY 1, 2
    ON CONFLICT (state, customs_status, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION shipment_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shipment_counts AS c (state, customs_status, slot, n)
    SELECT r.state, r.customs_status, pg_backend_pid(), -count(*) FROM old_rows AS r GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (state, customs_status, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION shipment_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM shipment_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER shipment_counts_ins AFTER INSERT ON shipments REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION shipment_counts_inserted();
CREATE TRIGGER shipment_counts_upd AFTER UPDATE ON shipments REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION shipment_counts_updated();
CREATE TRIGGER shipment_counts_del AFTER DELETE ON shipments REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION shipment_counts_deleted();
CREATE TRIGGER shipment_counts_trunc AFTER TRUNCATE ON shipments
    FOR EACH STATEMENT EXECUTE FUNCTION shipment_counts_truncated();

-- The shipments stored so far (the triggers' lock on shipments keeps writers out until this commits).
INSERT INTO shipment_counts (state, customs_status, slot, n)
SELECT state, customs_status, 0, count(*) FROM shipments GROUP BY 1, 2;

-- Fold the slots of sessions that ended into slot 0; returns how many rows were folded. A new session that
-- reuses a pid waits for the fold (row locks) and then counts in a fresh row.
CREATE FUNCTION shipment_counts_fold() RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM shipment_counts AS c
         WHERE c.slot <> 0 AND NOT EXISTS (SELECT FROM pg_stat_activity AS a WHERE a.pid = c.slot)
        RETURNING c.state, c.customs_status, c.n
    ), folded AS (
        INSERT INTO shipment_counts AS c (state, customs_status, slot, n)
        SELECT g.state, g.customs_status, 0, sum(g.n) FROM gone AS g GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (state, customs_status, slot) DO UPDATE SET n = c.n + EXCLUDED.n
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
