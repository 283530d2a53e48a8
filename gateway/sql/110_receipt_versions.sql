-- A receipt for an order, a payment or a waybill is correlated by the declaration's business key; which version
-- of that key it answers, by the guid it echoes (spec §5.1): a receipt for the first declaration that arrives
-- after its change (appType 2) was accepted must move the first one (and re-send it on a "4"), not the change,
-- which customs may not have yet. The guid index covered only the kinds correlated by guid; now every kind.
CREATE INDEX documents_doc_guid_every_kind_idx ON documents (doc_guid);
DROP INDEX documents_doc_guid_idx;
