-- 250_summary_lines: the summary applications (CEB701) naming an inventory, by the invtNo of one of their lines: a
-- second live application of the consignor naming an inventory one already names is refused
-- (summary.inventory_summarised; `lines @> '[{"invtNo": ...}]'`). Partial by message type, not kind, so that
-- documents_summary_key_idx (kind 'summary', migration 220) never answers that probe by reading itself whole; no
-- other message type maintains it.
CREATE INDEX IF NOT EXISTS documents_summary_lines_idx ON documents USING gin (lines jsonb_path_ops)
    WHERE message_type = 'CEB701';

-- The customs broker (declAgentCode) is a party of a summary application and its results (gateway.auth.PARTY_FIELDS):
-- the stored ones carry it among their parties too.
UPDATE documents SET parties = ARRAY(SELECT DISTINCT p FROM unnest(parties || ARRAY[head ->> 'declAgentCode']) AS p
                                      ORDER BY p)
 WHERE message_type IN ('CEB701', 'CEB792') AND coalesce(head ->> 'declAgentCode', '') <> ''
   AND NOT (head ->> 'declAgentCode') = ANY (parties);
