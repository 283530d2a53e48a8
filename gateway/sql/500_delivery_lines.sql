-- 500_delivery_lines: a supervision site's 入库明细单 (CEB711) lists the waybills unloaded under one B/L in its lines,
-- not in a head column, like the export transport messages (migration 210). An import shipment's view finds the
-- deliveries naming its waybill — the parcel arrived at the site — by the head's logisticsCode and
-- `lines @> '[{"logisticsNo": ...}]'`; partial, so no other kind (the ingest path's) ever maintains it.
CREATE INDEX IF NOT EXISTS documents_delivery_lines_idx ON documents USING gin (lines jsonb_path_ops)
    WHERE kind = 'delivery';
