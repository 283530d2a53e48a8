-- What the warehouses report of the orders the gateway sent them (POST /v1/warehouse/callbacks, the contract of
-- adapters/warehouse.py): every callback once, as it came. A callback names its order (orderId, the warehouse's
-- number) and echoes the order's reference: the document it was made from (messageType, guid). doc_guid is that
-- document's when the orderId is the one the gateway gave its order (adapters.warehouse.order_id), through which the
-- shipment view shows it; NULL otherwise (kept, shown nowhere). Callbacks may come twice or out of order: one row per
-- (order, status, time), and the view takes the furthest status.
CREATE TABLE IF NOT EXISTS warehouse_events (
    id                 bigserial   PRIMARY KEY,
    received_at        timestamptz NOT NULL DEFAULT now(),
    submitter          text        NOT NULL,  -- the warehouse's API key's name
    order_id           text        NOT NULL,
    warehouse_order_no text        NOT NULL,
    direction          text        NOT NULL,  -- inbound | outbound
    status             text        NOT NULL,  -- adapters.warehouse.CALLBACK_STATUSES
    reason             text,
    occurred_at        text        NOT NULL,  -- as the warehouse wrote it (ISO 8601 with its offset)
    message_type       text,                  -- the reference's messageType and guid
    doc_guid           text,
    reference          jsonb       NOT NULL DEFAULT '{}',
    UNIQUE (order_id, status, occurred_at)
);
CREATE INDEX IF NOT EXISTS warehouse_events_doc_guid_idx ON warehouse_events (doc_guid, id) WHERE doc_guid IS NOT NULL;
-- the console's live feed: the newest callback, and those since its last poll (gateway/console/queries.py MARKER,
-- CHANGED)
CREATE INDEX IF NOT EXISTS warehouse_events_received_at_idx ON warehouse_events (received_at);
