-- 230_tax_bill_changes: the console's live feed also tells an open shipment page that customs sent a tax bill for
-- the shipment's inventory, or moved one's status (CEB816/818, gateway/taxbills.py): they change nothing of the
-- shipment row, so its change marker reads the newest tax bill's received_at, and its list of changes the bills
-- received since, both through this index. Only tax bills' rows are in it (a few per released inventory).
CREATE INDEX receipts_tax_bills_idx ON receipts (received_at) WHERE message_type IN ('CEB816', 'CEB818');
