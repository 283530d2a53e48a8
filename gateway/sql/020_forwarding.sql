-- 020_forwarding: forwarding state per document, customs status per shipment, and every receipt received.
--
-- A message is forwarded as a whole (its signature covers all its documents), so its documents share
-- forward_state, sent_at and cop_msg_id. forward_state:
--   none      not forwarded (no route, or an ignored_older document is not stored at all)
--   held      an inventory waiting for its shipment to match and its order/payment/waybill receipts
--   queued    a customs job exists (enqueued in the same transaction as the state change)
--   sent      customs (or its relay / transfer folder) took the message; no receipt moved it yet
--   receipted the receipt in force is not a rejection
--   rejected  the receipt in force is a rejection (100, or a negative data-error code)
-- customs_* hold the receipt in force (gateway.receipts: monotonic by rank, then returnTime).

ALTER TABLE documents
    ADD COLUMN forward_state       text    NOT NULL DEFAULT 'none'
        CHECK (forward_state IN ('none', 'held', 'queued', 'sent', 'receipted', 'rejected')),
    ADD COLUMN cop_msg_id          text,            -- TransInfo/CopMsgId of the customs delivery (every retry)
    ADD COLUMN sent_at             timestamptz,     -- last successful transmission
    ADD COLUMN customs_status      text,            -- raw returnStatus of the receipt in force
    ADD COLUMN customs_rank        int,             -- gateway.receipts.RANKS
    ADD COLUMN customs_return_time text,            -- its returnTime (YYYYMMDDhhmmssSSS)
    ADD COLUMN customs_info        text,            -- its returnInfo
    ADD COLUMN pre_no              text,            -- E-Port preNo, learned from receipts (CEB622 ...)
    ADD COLUMN invt_no             text,            -- customs invtNo, learned from receipts
    ADD COLUMN last_receipt_at     timestamptz,
    ADD COLUMN receipt_overdue     boolean NOT NULL DEFAULT false,  -- set by the watchdog, cleared by a receipt
    ADD COLUMN repushes            int     NOT NULL DEFAULT 0;      -- re-sends (watchdog, transient receipts)

-- Receipt correlation (gateway.receipts.Correlation): echoed guid and copNo (inventories, cancellations,
-- returns, warehouse entries; orders, payments and waybills go by their keys' index), preNo/invtNo,
-- CEB900's CopMsgId.
CREATE INDEX documents_doc_guid_idx ON documents (doc_guid)
    WHERE kind IN ('inventory', 'cancel', 'refund', 'delivery');
CREATE INDEX documents_cop_no_idx ON documents ((head ->> 'copNo'))
    WHERE kind IN ('inventory', 'cancel', 'refund', 'delivery');
CREATE INDEX documents_pre_no_idx ON documents (pre_no) WHERE pre_no IS NOT NULL;
CREATE INDEX documents_invt_no_idx ON documents (invt_no) WHERE invt_no IS NOT NULL;
CREATE INDEX documents_cop_msg_id_idx ON documents (cop_msg_id) WHERE cop_msg_id IS NOT NULL;
-- The watchdog: sent, no receipt yet, oldest first.
CREATE INDEX documents_awaiting_receipt_idx ON documents (sent_at)
    WHERE forward_state = 'sent' AND last_receipt_at IS NULL;

-- Customs progress of the whole shipment (gateway.forward.shipment_customs_status), from its current legs:
--   pending   nothing of it transmitted yet (or only its inventory is held)
--   declared  at least one leg transmitted; customs has not accepted the inventory yet
--   accepted  the inventory is in the customs database (120, 300, 399, 5xx; or "already there")
--   released  the inventory is released (800) or closed (899)
--   rejected  a current leg was rejected (100, data error) or the inventory returned (700)
ALTER TABLE shipments
    ADD COLUMN customs_status     text NOT NULL DEFAULT 'pending'
        CHECK (customs_status IN ('pending', 'declared', 'accepted', 'released', 'rejected')),
    ADD COLUMN customs_info       text,
    ADD COLUMN customs_updated_at timestamptz;

-- Every receipt received, once (spec §8.4): the same (type, business keys, returnStatus, returnTime)
-- again is "already stored". One row per return element of the receipt message.
CREATE TABLE receipts (
    id            bigserial   PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    message_type  text        NOT NULL,  -- CEB312 ... CEB900
    root_guid     text        NOT NULL,  -- the receipt message's guid
    element_index int         NOT NULL,  -- 1-based return element
    doc_guid      text,                  -- the element's guid (usually the declared document's)
    keys          jsonb       NOT NULL,  -- business keys carried (everything but guid/status/time/info)
    return_status text        NOT NULL,
    return_time   text        NOT NULL,
    return_info   text,
    cop_msg_id    text,                  -- the envelope's CopMsgId, when it came in a DxpMsg
    raw_xml       text        NOT NULL,  -- the CEB receipt message
    source        text        NOT NULL,  -- 'http' | 'inbox'
    submitter     text,
    dedupe        text        NOT NULL UNIQUE,  -- gateway.receipts.ReceiptRecord.dedupe_key()
    message_id    bigint      REFERENCES messages (id),   -- the declared message it answers
    document_id   bigint      REFERENCES documents (id),  -- the declared document (NULL for CEB900, unmatched)
    applied       boolean     NOT NULL DEFAULT false,     -- it moved the document's customs state
    outcome       text        NOT NULL  -- gateway.receipts.Outcome
);
CREATE INDEX receipts_document_idx ON receipts (document_id) WHERE document_id IS NOT NULL;
CREATE INDEX receipts_message_idx ON receipts (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX receipts_received_at_idx ON receipts (received_at);

DO $$
BEGIN
    IF (SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression') THEN
        ALTER TABLE receipts ALTER COLUMN raw_xml SET COMPRESSION lz4;
    END IF;
END
$$;
