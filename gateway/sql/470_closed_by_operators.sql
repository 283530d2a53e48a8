-- 470_closed_by_operators: what the operators close because it can never be settled — a receipt kept unmatched that
-- no document of this gateway will ever answer (a broker receives the results of applications filed elsewhere), a
-- 179 question that can never be answered — with who closed it, when and why (POST /v1/receipts/unmatched/{id}/close,
-- POST /v1/payment-data/questions/{id}/close, the console's Close). A closed one leaves the open lists and /metrics'
-- counts (cbec_receipts_unmatched, cbec_payment_data_questions) and so their alerts; it stays listed as closed.
ALTER TABLE receipts ADD COLUMN IF NOT EXISTS closed_at timestamptz;
ALTER TABLE receipts ADD COLUMN IF NOT EXISTS closed_by text;
ALTER TABLE receipts ADD COLUMN IF NOT EXISTS close_reason text;

ALTER TABLE realtime_requests ADD COLUMN IF NOT EXISTS closed_at timestamptz;
ALTER TABLE realtime_requests ADD COLUMN IF NOT EXISTS closed_by text;
ALTER TABLE realtime_requests ADD COLUMN IF NOT EXISTS close_reason text;

-- The unmatched receipts, open and closed, each in an index of its own (430's held both): the open list and its count
-- stay the few that need a look however many were closed over the years. A receipt is stored open (closed_at NULL),
-- so each stored receipt enters one index, as before; a closed one linked later (still outcome 'unmatched' until
-- then: gateway.outbox's LINK_EARLY_* and a delivery again find it as before) leaves both.
DROP INDEX IF EXISTS receipts_unmatched_idx;
CREATE INDEX IF NOT EXISTS receipts_unmatched_open_idx ON receipts (id)
 WHERE outcome = 'unmatched' AND closed_at IS NULL;
CREATE INDEX IF NOT EXISTS receipts_unmatched_closed_idx ON receipts (id)
 WHERE outcome = 'unmatched' AND closed_at IS NOT NULL;

-- Likewise the questions not uploaded (380's index, now without the closed ones) and the closed ones.
DROP INDEX IF EXISTS realtime_requests_open_idx;
CREATE INDEX IF NOT EXISTS realtime_requests_open_idx ON realtime_requests (id)
 WHERE state <> 'uploaded' AND closed_at IS NULL;
CREATE INDEX IF NOT EXISTS realtime_requests_closed_idx ON realtime_requests (id) WHERE closed_at IS NOT NULL;
