-- The server-side ("simple") flow: where to send the browser after login, and the hash of the
-- HttpOnly session cookie that authenticates the browser afterwards.
ALTER TABLE login_attempts ADD COLUMN return_to TEXT;
ALTER TABLE sessions ADD COLUMN cookie_hash BYTEA;
CREATE UNIQUE INDEX sessions_cookie_hash ON sessions (cookie_hash);
