-- 140_customs_changes: the console's live feed also tells an open shipment page that the shipment's customs status
-- changed (a receipt, a release, a failed delivery): its change marker reads the newest customs_updated_at, and
-- its list of changes the shipments changed since, both through this index. Written only when a shipment's
-- customs status changes.
CREATE INDEX shipments_customs_changed_idx ON shipments (customs_updated_at) WHERE customs_updated_at IS NOT NULL;
