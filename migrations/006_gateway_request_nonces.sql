-- 006_gateway_request_nonces: replay protection for db-gateway requests that write.

------------------------------------------------------------------------------------------------
-- gateway_request_nonces
------------------------------------------------------------------------------------------------
-- Every signed gateway request carries a key id and a nonce. A request that can write inserts
-- its (key_id, nonce) here inside the same transaction as its writes, so a replay of it (to any
-- gateway instance, before or after a restart) fails the primary key and changes nothing. Rows
-- are needed only while their signature could still verify; each gateway deletes expired rows
-- periodically (db-gateway/src/replay.rs, safe with several instances running it).
CREATE TABLE gateway_request_nonces (
    -- The gateway's key ids are 1-64 printable ASCII characters (db-gateway/src/keys.rs).
    key_id     TEXT NOT NULL
               CONSTRAINT gateway_request_nonces_key_id_length CHECK (char_length(key_id) BETWEEN 1 AND 64),
    -- The gateway refuses longer nonces before they get here; the Worker sends 32 hex digits.
    nonce      TEXT NOT NULL
               CONSTRAINT gateway_request_nonces_nonce_length CHECK (char_length(nonce) BETWEEN 1 AND 128),
    -- The signature's `created` plus the gateway's allowed clock skew: after this instant no
    -- gateway accepts the signature any more, so the row may go.
    expires_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT gateway_request_nonces_pkey PRIMARY KEY (key_id, nonce)
);

COMMENT ON TABLE gateway_request_nonces IS 'Nonces of signed db-gateway requests that wrote; a replay fails the primary key. Rows past expires_at are deleted by the gateway.';

-- The cleanup: DELETE … WHERE expires_at < now() - margin, oldest first, in batches.
CREATE INDEX idx_gateway_request_nonces_expires_at ON gateway_request_nonces (expires_at);
