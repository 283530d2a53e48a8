-- 130_delivery_failed: a declaration whose delivery to customs went to the dead letters is 'failed', and so is
-- its shipment while customs has not accepted its inventory (gateway.forward.shipment_customs_status). The queue
-- tells the gateway in the transaction that moves the job (cbec_queue's on_dead / on_replayed hooks,
-- gateway.outbox.Outbox.deliveries_dead / deliveries_replayed): a replay puts the documents back to 'queued'.
--
-- The new lists hold the old ones, so every stored row satisfies them: NOT VALID spares the scan of the whole
-- table under the ALTER's exclusive lock at start-up (the checks apply to every row written from now on).
ALTER TABLE documents
    DROP CONSTRAINT documents_forward_state_check,
    ADD CONSTRAINT documents_forward_state_check
        CHECK (forward_state IN ('none', 'held', 'queued', 'sent', 'receipted', 'rejected', 'failed')) NOT VALID;

ALTER TABLE shipments
    DROP CONSTRAINT shipments_customs_status_check,
    ADD CONSTRAINT shipments_customs_status_check
        CHECK (customs_status IN ('pending', 'declared', 'accepted', 'released', 'rejected', 'failed')) NOT VALID;
