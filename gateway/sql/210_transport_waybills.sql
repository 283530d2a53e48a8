-- 210_transport_waybills: the export transport messages (运抵单 CEB507, 离境单 CEB509, 清单总分单 CEB607) list the
-- parcels' waybills in their lines, not in a head column: an arrival names many waybills of one carrier (its head's
-- logisticsCode), each line a logisticsNo. A shipment's view finds the ones naming its inventory's waybill by
-- `lines @> '[{"logisticsNo": ...}]'`; partial, so the import ingest path and every other kind never maintain it.
CREATE INDEX IF NOT EXISTS documents_transport_lines_idx ON documents USING gin (lines jsonb_path_ops)
    WHERE kind IN ('arrival', 'departure', 'manifest');
