-- The documents sent to customs and still without any receipt (the receipt watchdog's list), kept in a table of
-- their own instead of a partial index on documents. A send or a receipt changes forward_state, sent_at and
-- last_receipt_at; while an index of documents named them, each such update wrote a new entry into every index of
-- documents (a dozen). Now they are named by no index, so PostgreSQL can update the row in place on its page (a
-- HOT update: no index entry written), given room on the page: documents leave a quarter of each new page free.
-- Kept exact by the statements that change those columns (gateway/outbox.py): MARK_SENT adds; a receipt
-- (SET_CUSTOMS_STATE_AND_OUTCOMES, before any re-send it causes) and the watchdog's re-push (WATCHDOG) remove. They
-- run under the shipment's locks or the documents' row locks; tests compare the list with the documents after
-- each kind of change.
CREATE TABLE receipts_awaited (
    document_id bigint      PRIMARY KEY,  -- documents.id (documents are never deleted)
    sent_at     timestamptz NOT NULL
);
CREATE INDEX receipts_awaited_sent_idx ON receipts_awaited (sent_at);

INSERT INTO receipts_awaited (document_id, sent_at)
SELECT id, sent_at FROM documents
 WHERE forward_state = 'sent' AND last_receipt_at IS NULL AND sent_at IS NOT NULL;

DROP INDEX documents_awaiting_receipt_idx;

ALTER TABLE documents SET (fillfactor = 75);
