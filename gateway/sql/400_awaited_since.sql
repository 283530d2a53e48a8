-- How long a document has waited for customs' word: since the first send no receipt has answered. A re-send (the
-- watchdog's) sends it again (sent_at, which the watchdog times its next re-send by) and the wait goes on
-- (awaited_since kept): the operators' oldest wait and its alert count from the first send, not the last re-send. The
-- watchdog's re-send leaves the document in the list (it was sent, and nothing answered it); a receipt takes it out.
ALTER TABLE receipts_awaited ADD COLUMN IF NOT EXISTS awaited_since timestamptz;
UPDATE receipts_awaited SET awaited_since = sent_at WHERE awaited_since IS NULL;
ALTER TABLE receipts_awaited ALTER COLUMN awaited_since SET NOT NULL;
-- the longest waiting first (GET /v1/queue/awaited's pages, the oldest wait)
CREATE INDEX IF NOT EXISTS receipts_awaited_since_idx ON receipts_awaited (awaited_since, document_id);
