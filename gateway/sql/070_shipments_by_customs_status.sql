-- 070_shipments_by_customs_status: GET /v1/shipments?customs_status=... (a seller's "what was rejected",
-- an operator's "what is released today"), newest first like every shipment list: one index range per
-- status, so a rare status (rejected) is found without walking the others.

CREATE INDEX shipments_customs_updated_idx ON shipments (customs_status, updated_at, id);
