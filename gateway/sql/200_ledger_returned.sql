-- What a concluded return (CEB625, its CEB626 399 or above) gave back of an inventory's count toward its buyer's annual
-- quota: the row's amount is what the inventory counts after it, amount + returned what it counts in full. A later
-- leg reassesses the inventory less the return's value (gateway.keystate.assess_into), and a changed return
-- concluded again replaces what the earlier version gave back (gateway.outbox.RETURN_QUOTA) instead of adding to it.
ALTER TABLE tax_ledger ADD COLUMN IF NOT EXISTS returned numeric(19,5) NOT NULL DEFAULT 0;

-- The rows a concluded return gave quota back to before this column: what they lack of their inventory's dutiable
-- value (Σ line totalPrice + freight + insuredFee of its current version, to the cent) is what the return gave back.
-- Not a row the annual limit blocks (it counts nothing), nor one of an inventory void at customs (refused, cancelled).
UPDATE tax_ledger AS l SET returned = v.dutiable - l.amount
  FROM documents AS i,
       LATERAL (SELECT round(sum(CASE WHEN a.t ~ '^\s*\+?([0-9]+\.?[0-9]*|\.[0-9]+)\s*$' THEN a.t::numeric ELSE 0 END),
                             2) AS dutiable
                  FROM (SELECT x ->> 'totalPrice' FROM jsonb_array_elements(i.lines) AS x
                        UNION ALL SELECT i.head ->> 'freight'
                        UNION ALL SELECT i.head ->> 'insuredFee') AS a(t)) AS v
 WHERE i.message_type = 'CEB621' AND i.key1 = l.ebc_code AND i.key2 = l.order_no AND i.is_current AND NOT i.withdrawn
   AND l.returned = 0 AND l.blocked_at IS NULL AND l.amount < v.dutiable
   AND NOT (i.forward_state = 'rejected' AND i.app_type = '1')
   AND EXISTS (SELECT 1 FROM documents AS r
                WHERE r.ebp_code = i.ebp_code AND r.order_no = i.order_no AND r.message_type = 'CEB625'
                  AND r.key1 = i.key1 AND r.key2 = i.key2 AND NOT r.withdrawn AND r.forward_state = 'receipted'
                  AND r.customs_rank >= 60  -- 399 (gateway.receipts.RANK_CONCLUDED)
                  AND NOT EXISTS (SELECT 1 FROM documents AS n
                                   WHERE n.ebp_code = i.ebp_code AND n.order_no = i.order_no
                                     AND n.message_type = 'CEB621' AND n.key1 = i.key1 AND n.key2 = i.key2
                                     AND n.app_type = '1' AND n.id > r.id AND n.id <= i.id))
   AND NOT EXISTS (SELECT 1 FROM documents AS c
                    WHERE c.message_type = 'CEB623' AND c.key1 = i.key1 AND c.key2 = i.key2 AND c.is_current
                      AND c.forward_state = 'receipted' AND c.customs_rank >= 60);
