-- 430_unmatched_receipts: the receipts kept unmatched — customs' word on a document the gateway could not find (one
-- declared around it, keys that differ, a tax bill or summary result before the number naming it) — for the
-- operators' list (GET /v1/receipts/unmatched) and /metrics (cbec_receipts_unmatched), newest first: the few that
-- are, not the whole table. A receipt linked later (gateway.outbox LINK_EARLY_*), or matched when delivered again,
-- leaves it.
CREATE INDEX IF NOT EXISTS receipts_unmatched_idx ON receipts (id) WHERE outcome = 'unmatched';
