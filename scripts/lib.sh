# Shared by scripts/test and scripts/bench.

step() { printf '\n==> %s\n' "$*"; }

# Starts the local PostgreSQL (127.0.0.1:5432, trust auth) if it is down, and waits for it.
ensure_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
    for _ in $(seq 1 30); do
      pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break
      sleep 1
    done
  fi
  pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable at 127.0.0.1:5432" >&2; exit 1; }
}
