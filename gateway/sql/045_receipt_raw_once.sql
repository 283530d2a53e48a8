-- A receipt message may carry up to 100 return elements (one receipts row each): its raw XML is stored once,
-- on the row of its first new return element, instead of once per row (gateway.outbox INSERT_RECEIPTS).
-- The raw message of any receipt: the row of the same root_guid whose raw_xml is not NULL.
ALTER TABLE receipts ALTER COLUMN raw_xml DROP NOT NULL;
COMMENT ON COLUMN receipts.raw_xml IS
    'the CEB receipt message, on the row of its first new return element only (NULL on its other rows)';
