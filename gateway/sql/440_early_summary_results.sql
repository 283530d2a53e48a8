-- 440_early_summary_results: a summary result (CEB792) that comes before the CEB702 giving its application the sumNo
-- it names matches no application and is kept unmatched; customs sends its messages in no order (spec §8.4) and a
-- result once. When a receipt teaches a summary application its sumNo, the results kept unmatched under that number
-- are linked to it (gateway.outbox.LINK_EARLY_SUMMARY_RESULTS), found through this index: the unmatched results alone
-- (customs sends a broker the results of applications this gateway does not hold too: those stay here, by number).
CREATE INDEX IF NOT EXISTS receipts_unmatched_summary_results_idx ON receipts ((keys ->> 'sumNo'))
 WHERE outcome = 'unmatched' AND message_type = 'CEB792';
