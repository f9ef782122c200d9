#!/usr/bin/env bash
# Runs the whole workspace's tests against the services in .env (written by `make services`).
# Each integration test clones its own database from a migrated template, so tests run in
# parallel; databases left by earlier runs are dropped first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
set -a; . ./.env; set +a

# The outage tests start Redis servers of their own.
scripts/services.sh tools

# Drop test databases of earlier runs (a test cannot drop its own while its pool is open) — only
# on the private cluster: on a shared server they may belong to a run still going.
private_db="@127.0.0.1:${OBSERVE_PG_PORT:-54329}/"
if [[ "$DATABASE_URL" == *"$private_db"* ]] && command -v psql >/dev/null; then
  admin_url=$(printf '%s' "$DATABASE_URL" | sed -E 's#^(postgres(ql)?://[^/?]+)(/[^?]*)?#\1/postgres#')
  psql "$admin_url" -v ON_ERROR_STOP=0 -qtAc \
    "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\";' FROM pg_database WHERE datname LIKE 'observe_test_%' OR datname LIKE 'observe_tpl_%'" \
    | psql "$admin_url" -q >/dev/null 2>&1 || true
fi

# The browser snippet's own unit tests (batching, retries, parsing) run under Node's test runner.
if command -v node >/dev/null 2>&1; then
  node --test src/assets/sdk/
else
  echo "test.sh: Node.js is not installed: skipping the browser snippet's unit tests (src/assets/sdk/observe.test.js)" >&2
fi

# The Prometheus scrape config, alert rules and their unit tests (promtool, installed above by
# `scripts/services.sh tools`; skipped with a message when it is missing).
scripts/check-prometheus.sh

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
