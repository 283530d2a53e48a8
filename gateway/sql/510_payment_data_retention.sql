-- realtime.payment_data_retention_days (gateway.workers.run_retention): the payments last handed over, and customs'
-- questions asked, longest ago are found by these, oldest first, at any size of the tables.
CREATE INDEX IF NOT EXISTS payment_data_updated_idx ON payment_data (updated_at);
CREATE INDEX IF NOT EXISTS realtime_requests_received_idx ON realtime_requests (received_at);
