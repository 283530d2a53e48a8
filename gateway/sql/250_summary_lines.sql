-- 250_summary_lines: the summary applications (CEB701) naming an inventory, by the invtNo of one of their lines: a
-- second live application of the consignor naming an inventory one already names is refused
-- (summary.inventory_summarised; `lines @> '[{"invtNo": ...}]'`). Partial by message type, not kind, so that the
-- summaries' key index (kind 'summary', below) never answers that probe by reading itself whole; no other message
-- type maintains it.
CREATE INDEX IF NOT EXISTS documents_summary_lines_idx ON documents USING gin (lines jsonb_path_ops)
    WHERE message_type = 'CEB701';

-- The customs broker (declAgentCode) is a party of a summary application and its results (gateway.auth.PARTY_FIELDS):
-- the stored ones carry it among their parties too.
UPDATE documents SET parties = ARRAY(SELECT DISTINCT p FROM unnest(parties || ARRAY[head ->> 'declAgentCode']) AS p
                                      ORDER BY p)
 WHERE message_type IN ('CEB701', 'CEB792') AND coalesce(head ->> 'declAgentCode', '') <> ''
   AND NOT (head ->> 'declAgentCode') = ANY (parties);

-- A summary application is keyed by agentCode, copNo and msgSeqNo (the part: a split application's parts share its
-- copNo, and CEB702 answers copNo and msgSeqNo, A.30), as the export transport messages are: key2 holds copNo and
-- msgSeqNo joined by U+001F (gateway.messages.KEY_SEP), the part as a number ("01" is part 1, as a receipt names it;
-- the schema makes it an integer). Stored applications were keyed by copNo alone.
UPDATE documents SET key2 = key2 || E'\x1f' || btrim(coalesce(head ->> 'msgSeqNo', '1'), E' \t\r\n')::bigint::text
 WHERE message_type = 'CEB701' AND strpos(key2, E'\x1f') = 0;
-- GET /v1/summaries/{agentCode}/{copNo}: every version of every part of the copNo.
CREATE INDEX IF NOT EXISTS documents_summary_cop_no_idx ON documents (key1, split_part(key2, E'\x1f', 1))
    WHERE kind = 'summary';
DROP INDEX IF EXISTS documents_summary_key_idx;
