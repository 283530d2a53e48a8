-- Every consignor's B-type export inventories customs gave an invtNo, newest first: the candidates of GET
-- /v1/summaries/pending without an ebcCode (operators: what the bonded zone's exporters still have to summarise;
-- gateway.summary.PENDING_CANDIDATES_ALL). The same predicate as migration 340's index, by id alone.
CREATE INDEX IF NOT EXISTS documents_b_type_inventories_all_idx ON documents (id)
    WHERE message_type = 'CEB603' AND invt_no IS NOT NULL AND (head ->> 'statisticsFlag') = 'B';
