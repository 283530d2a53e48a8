-- The documents of a forwarded message the gateway did not keep: a change answered ignored_older (its appTime not
-- newer than the version stored) that came beside documents it did keep. The whole message goes to customs (its
-- signature covers all of them), so customs answers these too; such a receipt is known here by the document's guid
-- and moves nothing (gateway.outbox.CORRELATE, outcome ignored_older) — not the key's current version.
CREATE TABLE IF NOT EXISTS unkept_documents (
    doc_guid     text   NOT NULL,
    message_type text   NOT NULL,
    key1         text   NOT NULL,
    key2         text   NOT NULL,
    message_id   bigint NOT NULL REFERENCES messages (id)
);
CREATE INDEX IF NOT EXISTS unkept_documents_guid_idx ON unkept_documents (doc_guid);
