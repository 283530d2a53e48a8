-- 030_console: indexes for the operators' console (gateway/console) and /metrics (gateway/metrics.py).
--
-- Only reads of the console and the scrape need them; each one names the query it serves. None of them
-- covers a column the queue or the ingest path updates in place, so HOT updates of jobs and shipments
-- rows are not lost (shipments.state and updated_at change with every reconciliation anyway).

-- Counts by reconciliation state (index-only scan) and the mismatch list: one state, newest first.
CREATE INDEX shipments_state_updated_idx ON shipments (state, updated_at, id);
-- Mismatch list filter: buyer ID number.
CREATE INDEX shipments_buyer_idx ON shipments (buyer_id_number) WHERE buyer_id_number IS NOT NULL;
-- Mismatch list filter: logisticsNo alone (documents_logistics_idx leads with logisticsCode).
CREATE INDEX documents_logistics_no_idx ON documents (logistics_no) WHERE logistics_no IS NOT NULL;
-- Accepted messages per minute (charts), the newest message id for the live feed uses the primary key.
CREATE INDEX messages_received_at_idx ON messages (received_at);
-- Forwarded per minute and forward latency: successful attempts by the time they finished.
CREATE INDEX job_attempts_ok_finished_idx ON job_attempts (finished_at) WHERE outcome = 'ok';
-- A shipment's transmissions: jobs found by the dedupe key the forwarding derives from the message guid.
CREATE INDEX jobs_dedupe_key_idx ON jobs (dedupe_key) WHERE dedupe_key IS NOT NULL;
