-- The flow of a shipment's legs: 'import' (CEB311/411/511/621) or 'export' (CEB303/403/505/603). A shipment is of
-- one flow (gateway.keystate refuses a leg of the other, state.flow_conflict), so (ebp_code, order_no) stays its
-- key; the flow is shown and filtered on. Every shipment before this column is an import one.
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS flow text NOT NULL DEFAULT 'import';
