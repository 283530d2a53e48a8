-- The summary applications stored (CEB701) and customs' answers to them (CEB702 receipts, CEB792 results) by when they
-- came: the console's live feed (gateway/console/queries.py MARKER, CHANGED) names the export shipments whose
-- inventories they name, so that an open shipment page shows its summary declaration as it moves. Partial: no other
-- message or receipt type maintains them.
CREATE INDEX IF NOT EXISTS documents_summaries_created_idx ON documents (created_at) WHERE message_type = 'CEB701';
CREATE INDEX IF NOT EXISTS receipts_summary_answers_idx ON receipts (received_at)
    WHERE message_type IN ('CEB702', 'CEB792');
