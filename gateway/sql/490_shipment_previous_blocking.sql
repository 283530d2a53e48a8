-- 490_shipment_previous_blocking: the blocking findings a mismatched shipment had before its row was last written,
-- when it is mismatched still and a seller's webhook is configured (gateway.store's upsert of shipments sets it only
-- then; NULL otherwise). The upsert returns whether they changed, so that the sellers hear of a shipment that stays
-- mismatched while what holds it changes (one disagreement mended, another left: shipment.reconciliation_changed)
-- without reading the row first, and a write costs nothing more when no seller has a webhook or the shipment is not
-- mismatched. Without a default: adding it rewrites nothing.
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS previous_blocking jsonb;
