-- The 179 real-time payment data (gateway/realtime.py, spec §10).
--
-- payment_data: each payment's raw data as its platform handed it over (POST /v1/payment-data), one row per payment
-- (ebpCode, payTransactionId); handed over again, it replaces the row (updated_at). payment_orders: the orders it
-- paid, each order paid by one payment of its platform: what customs' question for an orderNo finds.
CREATE TABLE IF NOT EXISTS payment_data (
    id                 bigserial PRIMARY KEY,
    ebp_code           text NOT NULL,
    pay_transaction_id text NOT NULL,
    head               jsonb NOT NULL,
    lists              jsonb NOT NULL,
    submitter          text,
    received_at        timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (ebp_code, pay_transaction_id)
);

CREATE TABLE IF NOT EXISTS payment_orders (
    ebp_code   text NOT NULL,
    order_no   text NOT NULL,
    payment_id bigint NOT NULL REFERENCES payment_data (id) ON DELETE CASCADE,
    PRIMARY KEY (ebp_code, order_no)
);
CREATE INDEX IF NOT EXISTS payment_orders_payment_idx ON payment_orders (payment_id);

-- realtime_requests: customs' questions (platDataOpen), each stored with its upload's job in one transaction before
-- it is answered 10000; customs asks a session once (asked again, the same answer, no second upload). state: asked
-- (the upload queued or retrying), uploaded (customs answered 10000), refused (customs answered otherwise: the
-- job is a dead letter, replayable).
CREATE TABLE IF NOT EXISTS realtime_requests (
    id           bigserial PRIMARY KEY,
    ebp_code     text NOT NULL,
    order_no     text NOT NULL,
    session_id   text NOT NULL,
    service_time bigint NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    state        text NOT NULL DEFAULT 'asked' CHECK (state IN ('asked', 'uploaded', 'refused')),
    upload_guid  text,
    uploaded_at  timestamptz,
    answer       jsonb,
    UNIQUE (ebp_code, session_id)
);
CREATE INDEX IF NOT EXISTS realtime_requests_order_idx ON realtime_requests (ebp_code, order_no, id);
