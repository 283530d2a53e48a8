-- 250_summary_lines: the summary applications (CEB701) naming an inventory, by the invtNo of one of their lines: a
-- second live application of the consignor naming an inventory one already names is refused
-- (summary.inventory_summarised; `lines @> '[{"invtNo": ...}]'`). Partial by message type, not kind, so that
-- documents_summary_key_idx (kind 'summary', migration 220) never answers that probe by reading itself whole; no
-- other message type maintains it.
CREATE INDEX IF NOT EXISTS documents_summary_lines_idx ON documents USING gin (lines jsonb_path_ops)
    WHERE message_type = 'CEB701';
