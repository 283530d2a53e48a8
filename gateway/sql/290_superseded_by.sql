-- A key's versions walked back from a change customs refused, each version to the one it replaced
-- (documents.superseded_by, set when the change is written): REFUSED_VERSIONS finds the version customs holds wherever
-- it was (a payment changed to another orderNo, an inventory to another ebpCode). Partial: a first declaration, the
-- ingest hot path, writes no entry; a change writes one.
CREATE INDEX IF NOT EXISTS documents_superseded_by_idx ON documents (superseded_by) WHERE superseded_by IS NOT NULL;
