-- The version a change replaced, by the change's id (documents.superseded_by, set when the change is written): where a
-- refused change's earlier version is found when it names another shipment than that version did (a payment changed
-- to another orderNo, an inventory to another ebpCode: REFUSED_VERSIONS). Partial: a first declaration, the ingest
-- hot path, writes no entry; a change writes one.
CREATE INDEX IF NOT EXISTS documents_superseded_by_idx ON documents (superseded_by) WHERE superseded_by IS NOT NULL;
