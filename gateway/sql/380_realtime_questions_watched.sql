-- Customs' 179 questions as the operators watch them (GET /v1/payment-data/questions, the console's panel, /metrics):
-- each question names its upload's job (job_id: the job's attempts and dead letter, replayable) and when customs
-- answered its upload (answered_at: uploaded or refused; the live feed's marker). Questions asked before this
-- migration find their job by the key it was enqueued under (gateway.store.take_payment_question).
ALTER TABLE realtime_requests ADD COLUMN IF NOT EXISTS job_id bigint;
ALTER TABLE realtime_requests ADD COLUMN IF NOT EXISTS answered_at timestamptz;

UPDATE realtime_requests AS r
   SET job_id = (SELECT max(j.id) FROM jobs AS j
                  WHERE j.dedupe_key = 'realtime:' || r.ebp_code || ':' || r.session_id AND j.kind = 'realtime_upload')
 WHERE r.job_id IS NULL;
UPDATE realtime_requests SET answered_at = coalesce(uploaded_at, received_at)
 WHERE state <> 'asked' AND answered_at IS NULL;

-- The questions not uploaded yet (asked: waiting for the data or for customs; refused): few, whatever the history.
CREATE INDEX IF NOT EXISTS realtime_requests_open_idx ON realtime_requests (id) WHERE state <> 'uploaded';
-- A platform's questions: those a payment handed over answers (realtime.WAITING_UPLOADS, by ebpCode).
CREATE INDEX IF NOT EXISTS realtime_requests_platform_idx ON realtime_requests (ebp_code, id);
-- The newest answer to an upload (the live feed's marker).
CREATE INDEX IF NOT EXISTS realtime_requests_answered_idx ON realtime_requests (answered_at);
