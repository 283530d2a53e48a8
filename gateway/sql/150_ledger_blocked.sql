-- An inventory the annual limit blocks keeps a ledger row of 0; blocked_at says since when. Quota given back to
-- its buyer (a withdrawal, a change, a refused first declaration, a concluded cancellation or return) assesses the
-- buyer's blocked shipments again, in that order (gateway.keystate.reopen). The rows blocked before this column
-- get the time they were last written, and their inventory's key as the tie-break.
ALTER TABLE tax_ledger ADD COLUMN IF NOT EXISTS blocked_at timestamptz;

UPDATE tax_ledger AS l SET blocked_at = l.updated_at
  FROM documents AS d, shipments AS s
 WHERE l.amount = 0 AND l.blocked_at IS NULL
   AND d.message_type = 'CEB621' AND d.key1 = l.ebc_code AND d.key2 = l.order_no AND d.is_current AND NOT d.withdrawn
   AND s.ebp_code = d.ebp_code AND s.order_no = d.order_no
   AND s.findings @> '[{"code": "tax.annual_limit_exceeded"}]';
