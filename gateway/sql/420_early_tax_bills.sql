-- 420_early_tax_bills: a tax bill (CEB816/818) that comes before the CEB622 naming its inventory's invtNo matches no
-- inventory and is kept unmatched; customs sends its messages in no order (spec §8.4) and a bill once. When a receipt
-- teaches an inventory its invtNo, the bills kept unmatched under that number are linked to it
-- (gateway.outbox.LINK_EARLY_TAX_BILLS), found through this index: the unmatched bills alone (customs sends a
-- withholding agent the bills of declarations this gateway does not hold too: those stay here, by number).
CREATE INDEX IF NOT EXISTS receipts_unmatched_tax_bills_idx ON receipts ((keys ->> 'invtNo'))
 WHERE outcome = 'unmatched' AND message_type IN ('CEB816', 'CEB818');
