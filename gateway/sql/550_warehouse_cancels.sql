-- 550_warehouse_cancels: the cancels the gateway asked of a warehouse (jobs of kind warehouse.cancel: customs concluded
-- the cancellation of the inventory an outbound order was made from, or a delivery or order a route made an order of
-- was changed or withdrawn), one per order and endpoint, enqueued with it in the same transaction — the job itself is
-- deleted done_job_retention_days after it went, the record of the cancel stays with the order. It holds when the
-- cancel was asked and why, when it reached the warehouse (2xx) or the warehouse refused it (its answer, either way),
-- and when the warehouse confirmed it (its callback cancelled). A cancel needs a look — a parcel customs cancelled may
-- be leaving all the same — when the warehouse reported progress on the order after it was asked (progress_at: the
-- first such callback), refused it, or did not confirm it within forwarding.warehouse_cancel_timeout_s (overdue_at,
-- set by the watchdog); until it is confirmed, or an operator closed it (who, when, why). updated_at moves with each
-- change: the console's live feed watches it.
CREATE TABLE IF NOT EXISTS warehouse_cancels (
    id              bigserial   PRIMARY KEY,
    endpoint        text        NOT NULL,  -- the warehouse endpoint the cancel goes to
    order_id        text        NOT NULL,  -- the order cancelled (adapters.warehouse.order_id)
    direction       text        NOT NULL,  -- inbound | outbound: the order's
    message_type    text        NOT NULL,  -- the document the order was made from
    doc_guid        text        NOT NULL,
    reason          text        NOT NULL DEFAULT '',
    requested_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,           -- the warehouse answered 2xx
    refused_at      timestamptz,           -- the warehouse answered a refusal (a 4xx: the job a dead letter)
    answer          jsonb,                 -- the warehouse's answer: {status, warehouseOrderNo | code, reason}
    confirmed_at    timestamptz,           -- its callback cancelled
    progress_at     timestamptz,           -- the first callback of progress (accepted ... delivered) after the ask
    progress_status text,
    overdue_at      timestamptz,           -- not confirmed within warehouse_cancel_timeout_s
    closed_at       timestamptz,
    closed_by       text,
    close_reason    text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint, order_id)
);
-- a callback finds its order's cancels; a shipment's documents theirs
CREATE INDEX IF NOT EXISTS warehouse_cancels_order_idx ON warehouse_cancels (order_id);
CREATE INDEX IF NOT EXISTS warehouse_cancels_doc_guid_idx ON warehouse_cancels (doc_guid);
-- the few that need a look (GET /v1/warehouse/cancels, the console's panel, /metrics), without walking the others
CREATE INDEX IF NOT EXISTS warehouse_cancels_open_idx ON warehouse_cancels (id)
 WHERE confirmed_at IS NULL AND closed_at IS NULL
   AND (progress_at IS NOT NULL OR refused_at IS NOT NULL OR overdue_at IS NOT NULL);
CREATE INDEX IF NOT EXISTS warehouse_cancels_closed_idx ON warehouse_cancels (id) WHERE closed_at IS NOT NULL;
-- the watchdog's: those still awaiting the warehouse's word, oldest first
CREATE INDEX IF NOT EXISTS warehouse_cancels_awaited_idx ON warehouse_cancels (requested_at)
 WHERE confirmed_at IS NULL AND closed_at IS NULL AND overdue_at IS NULL;
-- the console's live feed (gateway/console/queries.py MARKER, CHANGED)
CREATE INDEX IF NOT EXISTS warehouse_cancels_updated_at_idx ON warehouse_cancels (updated_at);
