-- 050_console_sessions: operators' console sessions, shared by every gateway process behind one address.
-- Keyed by the SHA-256 of the session id (the table never holds a usable cookie); key_sha256 is the digest
-- of the API key the operator signed in with, so a session ends as soon as that key is no longer configured.
-- Times are seconds since the epoch on the gateways' clocks (created / last_seen).
CREATE TABLE console_sessions (
    id_sha256  bytea PRIMARY KEY,
    key_sha256 bytea NOT NULL,
    csrf       text NOT NULL,
    created    double precision NOT NULL,
    last_seen  double precision NOT NULL
);
CREATE INDEX console_sessions_created_idx ON console_sessions (created);
