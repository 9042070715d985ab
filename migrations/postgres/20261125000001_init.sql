-- Pending logins: one row per GetLoginUrl, deleted (consumed) by the first ExchangeCode.
CREATE TABLE login_attempts (
    state_hash    BYTEA  PRIMARY KEY,   -- SHA-256 of `state`; the state itself is never stored
    binding_hash  BYTEA  NOT NULL,      -- SHA-256 of the user-agent binding secret
    nonce         TEXT   NOT NULL,
    pkce_verifier TEXT   NOT NULL,
    redirect_uri  TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,      -- unix seconds
    expires_at    BIGINT NOT NULL
);
CREATE INDEX login_attempts_expires_at ON login_attempts (expires_at);

-- Signed-in users. Provider tokens are encrypted (AES-256-GCM) with the key-encryption key.
CREATE TABLE sessions (
    id                        TEXT   PRIMARY KEY,  -- the `sid` claim of authgate's JWTs
    subject                   TEXT   NOT NULL,
    profile                   TEXT   NOT NULL,     -- JSON
    provider_access_token     BYTEA,
    provider_refresh_token    BYTEA,
    provider_id_token         BYTEA,
    provider_sid              TEXT,
    provider_token_expires_at BIGINT,
    created_at                BIGINT NOT NULL,
    expires_at                BIGINT NOT NULL,
    revoked_at                BIGINT
);
CREATE INDEX sessions_subject ON sessions (subject);
CREATE INDEX sessions_provider_sid ON sessions (provider_sid);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- authgate's own signing keys, shared by every replica. Private keys are encrypted.
CREATE TABLE signing_keys (
    kid          TEXT   PRIMARY KEY,
    algorithm    TEXT   NOT NULL,
    private_key  BYTEA  NOT NULL,
    public_jwk   TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,   -- signs from this time on (published before)
    retires_at   BIGINT,            -- stops signing at this time
    expires_at   BIGINT             -- dropped from the JWKS at this time
);
