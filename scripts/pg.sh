#!/usr/bin/env bash
# Project-local PostgreSQL cluster, started from the distro's server binaries.
#
#   scripts/pg.sh start   # create (once) and start the cluster; prints nothing on success
#   scripts/pg.sh stop    # stop it (fast shutdown)
#   scripts/pg.sh url     # print its DATABASE_URL
#   scripts/pg.sh status  # exit 0 when it is running
#
# The data lives under var/pg (git-ignored). initdb and postgres refuse to run as root, so as
# root the cluster runs as the unprivileged system user `cartwise`. It listens on 127.0.0.1 only,
# on a port derived from the project path (the next free one if taken), with trust auth for the
# local superuser `cartwise`. No system service is used or touched.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pg_user=cartwise
state="$root/var/pg"

log() { printf '[pg] %s\n' "$*" >&2; }
die() { printf '[pg] error: %s\n' "$*" >&2; exit 1; }

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$dir" ] && [ -x "$dir/postgres" ] || die "PostgreSQL server binaries not found; run ./install.sh deps"
  echo "$dir"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$pg_user" -- "$@"
  else
    "$@"
  fi
}

# Where the data directory lives. As root it must be reachable by the `cartwise` user; when the
# checkout sits under a private directory (e.g. /root), the data goes to /var/tmp and var/pg
# points there with a symlink.
data_home() {
  if [ "$(id -u)" != 0 ]; then echo "$state"; return; fi
  if ! id "$pg_user" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
  fi
  if runuser -u "$pg_user" -- test -x "$root"; then
    echo "$state"
  else
    local hash
    hash=$(printf '%s' "$root" | cksum | cut -d' ' -f1)
    echo "/var/tmp/cartwise-pg-$hash"
  fi
}

pick_port() {
  if [ -f "$state/port" ]; then cat "$state/port"; return; fi
  local base port
  base=$(( 54000 + $(printf '%s' "$root" | cksum | cut -d' ' -f1) % 1000 ))
  for port in $(seq "$base" $((base + 50))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free port in $base..$((base + 50))"
}

cmd_url() {
  [ -f "$state/port" ] || die "the cluster has not been created yet; run scripts/pg.sh start"
  echo "postgres://$pg_user@127.0.0.1:$(cat "$state/port")/$pg_user"
}

cmd_status() {
  [ -f "$state/port" ] || return 1
  "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$(cat "$state/port")"
}

cmd_start() {
  local bin home port
  bin=$(pg_bin)
  home=$(data_home)
  if [ "$home" != "$state" ]; then
    mkdir -p "$root/var"
    [ -L "$state" ] || { [ -d "$state" ] && rmdir "$state" 2>/dev/null; ln -sfn "$home" "$state"; }
  fi
  mkdir -p "$home"
  [ "$(id -u)" = 0 ] && chown "$pg_user" "$home"
  port=$(pick_port)
  if [ ! -f "$home/data/PG_VERSION" ]; then
    log "creating the project-local cluster in $home/data"
    as_pg "$bin/initdb" -D "$home/data" -U "$pg_user" --auth=trust -E UTF8 --locale=C.UTF-8 >"$home/initdb.log" 2>&1 \
      || as_pg "$bin/initdb" -D "$home/data" -U "$pg_user" --auth=trust -E UTF8 --locale=C >"$home/initdb.log" 2>&1 \
      || die "initdb failed; see $home/initdb.log"
    as_pg tee -a "$home/data/postgresql.conf" >/dev/null <<CONF
# CartWise project-local cluster (development, tests and the demo).
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
CONF
  fi
  echo "$port" | as_pg tee "$home/port" >/dev/null
  if cmd_status; then return 0; fi
  as_pg "$bin/pg_ctl" -D "$home/data" -o "-p $port" -l "$home/server.log" -w -t 60 start >/dev/null \
    || die "postgres did not start; see $home/server.log"
  "$bin/psql" -q -h 127.0.0.1 -p "$port" -U "$pg_user" -d postgres -tc \
    "SELECT 1 FROM pg_database WHERE datname = '$pg_user'" | grep -q 1 \
    || "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$pg_user" "$pg_user"
}

cmd_stop() {
  local home
  [ -e "$state/data/PG_VERSION" ] || return 0
  home=$(cd "$state" && pwd -P)
  as_pg "$(pg_bin)/pg_ctl" -D "$home/data" -m fast -w stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  url) cmd_url ;;
  status) cmd_status ;;
  *) echo "usage: scripts/pg.sh start|stop|url|status" >&2; exit 2 ;;
esac
