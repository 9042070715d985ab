-- Single-use refresh handles (RefreshSession). A used handle keeps its row (used_at set) so that
-- presenting it again is recognised as reuse and revokes the session.
CREATE TABLE refresh_handles (
    handle_hash BYTEA  PRIMARY KEY,   -- SHA-256 of the handle; the handle itself is never stored
    session_id  TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX refresh_handles_session_id ON refresh_handles (session_id);

-- `jti`s of accepted back-channel logout tokens, kept until they expire, to refuse replays.
CREATE TABLE logout_token_jtis (
    jti        TEXT   PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Every replica polls recent revocations.
CREATE INDEX sessions_revoked_at ON sessions (revoked_at);
