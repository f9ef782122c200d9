#!/usr/bin/env bash
# Starts (or reuses) observe's private PostgreSQL and Redis, bound to 127.0.0.1 with their data
# under .data/, and writes DATABASE_URL and REDIS_URL to .env.
#
#   scripts/services.sh          start or reuse, then print the URLs
#   scripts/services.sh stop     stop what this script started
#
# A DATABASE_URL or REDIS_URL already set in the environment is used as given and that service
# is not started (both set: nothing is started). Ports can be moved with OBSERVE_PG_PORT / OBSERVE_REDIS_PORT.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
data="$root/.data"
pg_port=${OBSERVE_PG_PORT:-54329}
redis_port=${OBSERVE_REDIS_PORT:-63799}
pg_data="$data/pg"
redis_dir="$data/redis"

# As root the cluster runs as the postgres user, which must be able to reach its data directory.
# A checkout it cannot traverse (under /root, say) keeps the cluster in /var/lib/observe instead,
# linked from .data/pg so it is still found there. Called once PostgreSQL is installed (the
# postgres user exists), and only when the private cluster is used.
resolve_pg_data() {
  [ "$(id -u)" -eq 0 ] || return 0
  mkdir -p "$data"
  if [ -L "$pg_data" ]; then
    pg_data=$(readlink -f "$pg_data")
  elif [ ! -e "$pg_data" ] && ! runuser -u postgres -- test -x "$data" 2>/dev/null; then
    local outside
    outside="/var/lib/observe/$(printf '%s' "$root" | cksum | cut -d' ' -f1)/pg"
    mkdir -p "$outside"
    ln -s "$outside" "$pg_data"
    pg_data=$outside
  fi
}

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs a command as the owner of the PostgreSQL cluster: initdb refuses to run as root.
as_pg() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_bin_dir() {
  local dir version
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    version=$(basename "$(dirname "$dir")")
    if [ "${version%%.*}" -ge 15 ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

install_packages() {
  local pkgs=("$@")
  if is_root; then
    log "installing ${pkgs[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    # policy-rc.d keeps the packages' own system services from starting: we run private ones.
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
      # Removed however the install ends: left behind it would block every service start.
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  else
    die "missing ${pkgs[*]}; install with: sudo apt-get update && sudo apt-get install -y ${pkgs[*]}"
  fi
}

# ensure_installed NEED_PG NEED_REDIS (1 or 0 each)
ensure_installed() {
  local need_pg=$1 need_redis=$2 missing=()
  if [ "$need_pg" -eq 1 ]; then
    pg_bin_dir >/dev/null || missing+=(postgresql)
  fi
  if [ "$need_redis" -eq 1 ]; then
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    install_packages "${missing[@]}"
  fi
  if [ "$need_pg" -eq 1 ]; then
    pg_bin_dir >/dev/null || die "PostgreSQL 15 or newer not found under /usr/lib/postgresql/*/bin after install"
  fi
  if [ "$need_redis" -eq 1 ]; then
    local redis_major
    redis_major=$(redis-server --version | sed -n 's/.*v=\([0-9]*\)\..*/\1/p')
    [ "${redis_major:-0}" -ge 7 ] || die "Redis 7 or newer is needed, found: $(redis-server --version)"
  fi
}

# Single-quotes a value for a file that is sourced as shell.
shell_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# A URL with its password masked, for printing.
masked() { printf '%s' "$1" | sed -E 's#^([a-z]+://[^:/@]*):[^@]*@#\1:***@#'; }

write_env() {
  local db_url=$1 redis_url=$2
  (umask 077 && printf 'DATABASE_URL=%s\nREDIS_URL=%s\n' "$(shell_quote "$db_url")" "$(shell_quote "$redis_url")" > "$root/.env")
  chmod 600 "$root/.env"
  echo "DATABASE_URL=$(masked "$db_url")"
  echo "REDIS_URL=$(masked "$redis_url")"
}

pg_running() {
  local bin
  bin=$(pg_bin_dir)
  [ -f "$pg_data/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1
}

start_pg() {
  local bin
  bin=$(pg_bin_dir)
  mkdir -p "$data"
  resolve_pg_data
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $pg_data"
    mkdir -p "$pg_data"
    is_root && chown postgres:postgres "$pg_data"
    chmod 700 "$pg_data"
    # trust auth is safe here: the cluster listens on 127.0.0.1 and a private socket dir only.
    as_pg "$bin/initdb" -D "$pg_data" -U observe --auth=trust --encoding=UTF8 --no-locale >/dev/null
  fi
  if pg_running; then
    log "PostgreSQL already running on 127.0.0.1:$pg_port"
  else
    log "starting PostgreSQL on 127.0.0.1:$pg_port"
    as_pg "$bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w -t 60 start \
      -o "-p $pg_port -k $pg_data -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=on" >/dev/null \
      || die "PostgreSQL did not start; see $pg_data/server.log"
  fi
  local i
  for i in $(seq 1 60); do
    "$bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q && break
    sleep 0.5
  done
  "$bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q || die "PostgreSQL does not accept connections on $pg_port"
  if ! "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U observe -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname='observe'" | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U observe observe
  fi
}

redis_running() {
  redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG
}

start_redis() {
  mkdir -p "$redis_dir"
  if redis_running; then
    log "Redis already running on 127.0.0.1:$redis_port"
  else
    log "starting Redis on 127.0.0.1:$redis_port"
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes \
      --dir "$redis_dir" --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log" \
      --save '' --appendonly no >/dev/null
  fi
  local i
  for i in $(seq 1 40); do
    redis_running && return 0
    sleep 0.25
  done
  die "Redis does not answer on $redis_port; see $redis_dir/redis.log"
}

stop_all() {
  local bin
  [ -L "$pg_data" ] && pg_data=$(readlink -f "$pg_data")
  if bin=$(pg_bin_dir) && pg_running; then
    log "stopping PostgreSQL"
    as_pg "$bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null
  fi
  if [ -f "$redis_dir/redis.pid" ] && redis_running; then
    log "stopping Redis"
    redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  fi
  rm -f "$redis_dir/redis.pid"
}

case "${1:-start}" in
  start)
    # A URL already in the environment is used as given; only the others are started here.
    db_url=${DATABASE_URL:-}
    redis_url=${REDIS_URL:-}
    need_pg=1; need_redis=1
    [ -n "$db_url" ] && need_pg=0
    [ -n "$redis_url" ] && need_redis=0
    ensure_installed "$need_pg" "$need_redis"
    if [ "$need_pg" -eq 1 ]; then
      start_pg
      db_url="postgres://observe@127.0.0.1:$pg_port/observe"
    else
      log "using DATABASE_URL from the environment"
    fi
    if [ "$need_redis" -eq 1 ]; then
      start_redis
      redis_url="redis://127.0.0.1:$redis_port/"
    else
      log "using REDIS_URL from the environment"
    fi
    write_env "$db_url" "$redis_url"
    ;;
  stop)
    stop_all
    ;;
  tools)
    # The tests start Redis servers of their own (outage drills), whatever REDIS_URL says.
    ensure_installed 0 1
    # The metrics export test checks its Prometheus text with `promtool check metrics`, and the
    # operability test runs a Prometheus server of its own over config/prometheus/ (Debian's
    # prometheus package; policy-rc.d keeps its system service from starting).
    { command -v promtool >/dev/null && command -v prometheus >/dev/null; }       || install_packages prometheus
    # The dashboard's browser tests drive Debian's Chromium through chromedriver (WebDriver).
    { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } \
      || install_packages chromium chromium-driver
    ;;
  *)
    die "usage: $0 [start|stop|tools]"
    ;;
esac
