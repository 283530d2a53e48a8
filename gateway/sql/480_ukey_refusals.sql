-- 480_ukey_refusals: a UKey's refusal of a signature (a wrong PIN, no card), shared by every process of the gateway on
-- every host (cbec serve, its API processes, each cbec worker), by the URL of the client control the card is behind.
-- A card locks after a few wrong PINs: once it refused, no process sends it a PIN again until that process is reloaded
-- (SIGHUP) — its configuration (a token of the process, or of a cbec serve and its API processes) is then added to
-- asked_again. A refusal empties asked_again. Each signature reads the row under its lock, held while the card answers
-- (gateway.ukey.CardRefusal), so of processes signing at once the first refused stops the others before they send.
CREATE TABLE IF NOT EXISTS ukey_refusals (
    url         text        PRIMARY KEY,
    refused     boolean     NOT NULL DEFAULT false,
    asked_again text[]      NOT NULL DEFAULT '{}',  -- the configurations reloaded since the refusal: they may ask again
    refusals    bigint      NOT NULL DEFAULT 0,     -- how often the card refused, ever
    reason      text,                               -- the card's words at the last refusal
    refused_at  timestamptz,                        -- the database's clock, as every host reads it
    refused_by  text                                -- host:pid of the process it refused
);
