-- Session upkeep: when a session was last used (the idle timeout), and the refresh lease that
-- lets one replica at a time refresh a session at the provider (a random token and until when
-- it holds; an abandoned lease lapses).
ALTER TABLE sessions ADD COLUMN last_used_at BIGINT;
ALTER TABLE sessions ADD COLUMN refresh_lease TEXT;
ALTER TABLE sessions ADD COLUMN refresh_lease_until BIGINT;
