-- What a concluded return (CEB625, its CEB626 399 or above) gave back of an inventory's count toward its buyer's annual
-- quota: the row's amount is what the inventory counts after it, amount + returned what it counts in full. A later
-- leg reassesses the inventory less the return's value (gateway.keystate.assess_into), and a changed return
-- concluded again replaces what the earlier version gave back (gateway.outbox.RETURN_QUOTA) instead of adding to it.
ALTER TABLE tax_ledger ADD COLUMN IF NOT EXISTS returned numeric(19,5) NOT NULL DEFAULT 0;

-- The rows of inventories customs concluded a return for before this column are recounted by the migration's data
-- step (gateway.db.DATA_STEPS: gateway.store.recount_returns), with the allocation the gateway itself uses.
