-- 001_core: messages, their business documents, shipments (三单对碰 state) and the buyers' tax ledger.
--
-- Conventions: business keys and codes are stored as the spec's text (no casts, appTime compares as
-- 14-digit text); heads and lines are jsonb copies of the extracted documents so that the store can
-- rebuild gateway.documents.Document objects without re-parsing XML. XML stays `text` (the embedded
-- server has no `xml` type).

-- Every accepted message, once. `response` is the answer given, replayed verbatim when the same
-- guid arrives again with the same bytes (sha256).
CREATE TABLE messages (
    id           bigserial PRIMARY KEY,
    guid         text        NOT NULL UNIQUE,
    message_type text        NOT NULL,
    sha256       bytea       NOT NULL,
    raw_xml      text        NOT NULL,
    source       text        NOT NULL CHECK (source IN ('xml', 'json')),
    submitter    text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    response     jsonb,
    http_status  int
);

-- Every refused message, for audit and metrics. guid is not unique: a rejected guid may come back fixed.
CREATE TABLE rejected_messages (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    submitter    text        NOT NULL,
    guid         text,
    message_type text,
    raw          text        NOT NULL,  -- at most 64 KiB of the body
    raw_size     int         NOT NULL,  -- size of the whole body in bytes
    issues       jsonb       NOT NULL,
    http_status  int         NOT NULL
);
CREATE INDEX rejected_messages_received_at_idx ON rejected_messages (received_at);
CREATE INDEX rejected_messages_guid_idx ON rejected_messages (guid) WHERE guid IS NOT NULL;

-- One row per business document (Order, Payment, Logistics, Inventory ...) per message. A change
-- (appType 2) or a withdrawal (appType 3) adds a row that becomes current and points the previous
-- one at it through superseded_by, so the history of a key is kept. A withdrawal row is current and
-- withdrawn (a tombstone); receipts are stored with is_current = false (they carry no key state).
CREATE TABLE documents (
    id                 bigserial PRIMARY KEY,
    message_id         bigint      NOT NULL REFERENCES messages (id),
    doc_index          int         NOT NULL,  -- 1-based position under the root
    doc_guid           text        NOT NULL,  -- the head guid
    kind               text        NOT NULL,  -- gateway.messages.Kind
    message_type       text        NOT NULL,  -- CEB311 ...
    key1               text        NOT NULL,  -- MessageType.keys values, trimmed
    key2               text        NOT NULL DEFAULT '',
    order_no           text,
    ebp_code           text,
    ebc_code           text,
    logistics_code     text,
    logistics_no       text,
    pay_code           text,
    pay_transaction_id text,
    app_type           text,
    app_time           text,  -- YYYYMMDDhhmmss, compared as text
    app_status         text,
    path               text        NOT NULL,  -- /CEB311Message/Order[2]
    head               jsonb       NOT NULL,
    lines              jsonb       NOT NULL DEFAULT '[]',
    parties            text[]      NOT NULL DEFAULT '{}',  -- every enterprise code in the head
    is_current         boolean     NOT NULL DEFAULT true,
    superseded_by      bigint      REFERENCES documents (id) DEFERRABLE INITIALLY DEFERRED,
    withdrawn          boolean     NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, doc_index)
);
-- The race-proof guard: one current row per key. It is stricter than "one live (not withdrawn)
-- document per key", which it implies, and it also serves the current-row lookup by key.
CREATE UNIQUE INDEX documents_current_key_idx ON documents (message_type, key1, key2) WHERE is_current;
-- Shipment legs (order, payment, inventory) by the order's key; all versions, so history comes too.
CREATE INDEX documents_ebp_order_idx ON documents (ebp_code, order_no);
-- Waybills by the order number they name, and by their own key as inventories reference it.
CREATE INDEX documents_waybill_order_idx ON documents (order_no) WHERE kind = 'waybill';
CREATE INDEX documents_logistics_idx ON documents (logistics_code, logistics_no);

-- Reconciliation state of one import shipment, keyed like the order. ebp_code is '' while only a
-- waybill is known (a waybill names no platform); that row goes away once a keyed shipment takes
-- the waybill.
CREATE TABLE shipments (
    id              bigserial PRIMARY KEY,
    ebp_code        text        NOT NULL,
    order_no        text        NOT NULL,
    ebc_code        text,
    state           text        NOT NULL,  -- gateway.reconcile.ShipmentState
    missing         text[]      NOT NULL DEFAULT '{}',  -- kinds of the missing legs
    findings        jsonb       NOT NULL DEFAULT '[]',  -- Finding.as_dict() of reconciliation and tax
    parties         text[]      NOT NULL DEFAULT '{}',
    mode            text,  -- tradeMode of the inventory (1210, 9610 ...)
    buyer_id_number text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (ebp_code, order_no)
);
CREATE INDEX shipments_order_no_idx ON shipments (order_no);
CREATE INDEX shipments_updated_idx ON shipments (updated_at, id);
CREATE INDEX shipments_parties_idx ON shipments USING gin (parties);

-- What each inventory counts toward its buyer's annual quota (spec §7, ¥26,000 a year).
CREATE TABLE tax_ledger (
    buyer_id_number text          NOT NULL,
    year            int           NOT NULL,
    ebc_code        text          NOT NULL,
    order_no        text          NOT NULL,
    amount          numeric(19,5) NOT NULL,
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (buyer_id_number, year, ebc_code, order_no)
);
CREATE INDEX tax_ledger_inventory_idx ON tax_ledger (ebc_code, order_no);

-- lz4 compresses the XML and JSON several times faster than pglz; not every build has it.
DO $$
BEGIN
    IF (SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression') THEN
        ALTER TABLE messages ALTER COLUMN raw_xml SET COMPRESSION lz4;
        ALTER TABLE messages ALTER COLUMN response SET COMPRESSION lz4;
        ALTER TABLE rejected_messages ALTER COLUMN raw SET COMPRESSION lz4;
        ALTER TABLE documents ALTER COLUMN head SET COMPRESSION lz4;
        ALTER TABLE documents ALTER COLUMN lines SET COMPRESSION lz4;
        ALTER TABLE shipments ALTER COLUMN findings SET COMPRESSION lz4;
    END IF;
END
$$;
