-- The tax ledger's buyer is an ID card number in upper case (gateway.keystate.buyer_of): its check character X
-- was kept as sent, so "…380x" and "…380X", one person, had two annual quotas. An inventory keeps one ledger
-- row (its buyer's), so no two rows of one inventory can meet here.
UPDATE tax_ledger SET buyer_id_number = upper(buyer_id_number) WHERE buyer_id_number <> upper(buyer_id_number);
