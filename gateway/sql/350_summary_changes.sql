-- The summary applications stored (CEB701 messages) and customs' answers to them (CEB702 receipts, CEB792 results) by
-- when they came: the console's live feed (gateway/console/queries.py MARKER, CHANGED) names the export shipments
-- whose inventories they name, so that an open shipment page shows its summary declaration as it moves. Partial: no
-- other message or receipt type maintains them. On messages, not documents: a documents index partial on CEB701 alone
-- is one the summary statements' generic plans could read whole instead of their GIN index of lines.
CREATE INDEX IF NOT EXISTS messages_summaries_idx ON messages (received_at) WHERE message_type = 'CEB701';
CREATE INDEX IF NOT EXISTS receipts_summary_answers_idx ON receipts (message_type, received_at)
    WHERE message_type IN ('CEB702', 'CEB792');
