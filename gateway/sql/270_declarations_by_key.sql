-- The first declarations (appType 1) of the types other documents name by invtNo (gateway.keystate.BY_INVT_NO: the
-- export inventory CEB603) by their key, every version: READ_STATE asks whether a number customs gave names a
-- declaration before its key was declared anew, for any order (the agent may use a copNo again once its inventory is
-- withdrawn). Partial: no import document, none of the ingest hot path, enters it.
CREATE INDEX IF NOT EXISTS documents_declared_numbered_idx ON documents (key1, key2, id)
    WHERE message_type = 'CEB603' AND app_type = '1';
