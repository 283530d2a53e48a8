-- 230_tax_bill_changes: the console's live feed also tells an open shipment page that customs sent a tax bill for
-- the shipment's inventory, or moved one's status (CEB816/818, gateway/taxbills.py): they change nothing of the
-- shipment row, so its change marker reads the newest tax bill's received_at, and its list of changes the bills
-- received since, both through this index. Only tax bills' rows that matched an inventory are in it (a few per
-- released inventory): customs sends a withholding agent the bills of every declaration, and those of inventories
-- this gateway does not hold name no shipment; had they place in the feed's limited read, they would crowd out one
-- that does.
CREATE INDEX receipts_tax_bills_idx ON receipts (received_at)
 WHERE message_type IN ('CEB816', 'CEB818') AND document_id IS NOT NULL;
