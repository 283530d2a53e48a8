-- The warehouses' callbacks placed on no document (doc_guid NULL: an order the gateway did not make, or a reference it
-- does not hold), which no shipment shows: GET /v1/warehouse/callbacks?linked=false and the console's panel list them
-- newest first, and the console's live feed watches the newest (gateway/console/queries.py MARKER). Few, and read
-- without walking the linked ones.
CREATE INDEX IF NOT EXISTS warehouse_events_unlinked_idx ON warehouse_events (id) WHERE doc_guid IS NULL;
