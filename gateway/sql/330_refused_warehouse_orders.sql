-- The warehouses' callbacks refusing or cancelling an order (status rejected, cancelled: goods the warehouse will not
-- ship), which the console's warehouse panel lists and its live feed watches (gateway/console/queries.py MARKER), newest
-- first, without walking every other callback.
CREATE INDEX IF NOT EXISTS warehouse_events_refused_idx ON warehouse_events (id) WHERE status IN ('rejected', 'cancelled');
