-- Refresh grace (cookie mode): a used refresh handle keeps, until grace_until (a few seconds),
-- its successor sealed with a key that only the used handle itself derives, so that a second
-- tab or a retried refresh presenting the same refresh cookie gets that successor instead of
-- ending the session. Handles stay stored hashed; the sealed successor is useless without the
-- used handle.
ALTER TABLE refresh_handles ADD COLUMN successor_sealed BLOB;
ALTER TABLE refresh_handles ADD COLUMN grace_until BIGINT;
-- The sweep clears passed graces; few rows have one at a time.
CREATE INDEX refresh_handles_grace_until ON refresh_handles (grace_until) WHERE grace_until IS NOT NULL;
-- When the session was last checked at the provider (a refresh there); RefreshSession calls the
-- provider again only after provider_refresh_min_interval, so reloads and tabs do not hammer it.
ALTER TABLE sessions ADD COLUMN provider_checked_at BIGINT;
