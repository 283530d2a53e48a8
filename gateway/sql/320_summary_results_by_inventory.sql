-- Customs' summary results (CEB792, kept in receipts like every answer) by the inventories their items list: an export
-- shipment's view shows under which customs declaration its B-type inventory's items were declared
-- (gateway.summary.RESULTS_OF_INVENTORY), through `keys -> 'items' @> [{"invtNo": ...}]`. Partial: no other receipt
-- maintains it.
CREATE INDEX IF NOT EXISTS receipts_summary_items_idx ON receipts USING gin ((keys -> 'items') jsonb_path_ops)
    WHERE message_type = 'CEB792';
