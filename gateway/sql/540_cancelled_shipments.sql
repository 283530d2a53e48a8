-- 540_cancelled_shipments: a shipment whose inventory customs cancelled — its cancellation (CEB623, CEB605) concluded,
-- CEB624 / CEB606 399 and above — and that customs had not released is 'cancelled' (gateway.forward
-- .shipment_customs_status): customs holds no inventory of it until one is declared anew. It said 'accepted' (or
-- 'declared') before, what customs had said of the inventory it then cancelled. A released shipment stays released.
--
-- The new list holds the old one: NOT VALID spares the scan of the whole table under the ALTER's lock (as 130).
ALTER TABLE shipments
    DROP CONSTRAINT shipments_customs_status_check,
    ADD CONSTRAINT shipments_customs_status_check
        CHECK (customs_status IN ('pending', 'declared', 'accepted', 'released', 'cancelled', 'rejected', 'failed'))
        NOT VALID;
