-- 450_unsent_documents: forward_state 'unsent', a version the gateway held and will never send — withdrawn before it
-- was sent (the inventory withdrawn while it waited for its shipment, spec §6.7: customs never had it) or replaced by a
-- newer version before it was sent, and the withdrawal of a document customs never had, concluded by the gateway:
-- nothing of it goes to customs (gateway.outbox.Outbox.settle).
-- A receipt that names one moves nothing, as for a held one.
--
-- The new list holds the old one, so every stored row satisfies it: NOT VALID spares the scan of the whole table
-- under the ALTER's exclusive lock at start-up (the check applies to every row written from now on).
ALTER TABLE documents
    DROP CONSTRAINT documents_forward_state_check,
    ADD CONSTRAINT documents_forward_state_check
        CHECK (forward_state IN ('none', 'held', 'queued', 'sent', 'receipted', 'rejected', 'failed', 'unsent'))
        NOT VALID;
