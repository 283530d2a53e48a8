-- 460_shipment_previous_state: the state a shipment had before its row was last written (gateway.store's upsert of
-- shipments sets it from the row it replaces; NULL: the row was inserted then). The upsert returns it beside the new
-- state, so that the ingest knows in the statement that writes a shipment whether its reconciliation changed — what
-- a seller's webhook is told of (shipment.reconciliation_changed) — without reading the row first. Without a default:
-- adding it rewrites nothing, and a row written before it gets its value at its next write.
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS previous_state text;
