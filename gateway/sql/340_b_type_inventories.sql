-- A consignor's B-type export inventories customs gave an invtNo (released or on their way), newest first: the candidates
-- of GET /v1/summaries/pending (gateway.summary.PENDING_CANDIDATES), what the consignor still has to summarise.
-- Partial: no other document maintains it; invt_no and head are indexed already, so receipts' updates stay HOT.
CREATE INDEX IF NOT EXISTS documents_b_type_inventories_idx ON documents (ebc_code, id)
    WHERE message_type = 'CEB603' AND invt_no IS NOT NULL AND (head ->> 'statisticsFlag') = 'B';
