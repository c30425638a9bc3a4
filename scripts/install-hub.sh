#!/usr/bin/env bash
# Installs the CartWise cloud hub as a systemd service on a server (Debian with systemd).
# Idempotent: every step checks before it acts; an operator's settings are never overwritten.
# Called by `./install.sh hub`.
#
#   scripts/install-hub.sh [--prefix DIR] [--no-start] [--no-migrate] [--binary PATH]
#
#   --prefix DIR    install under DIR instead of / (staging, tests). The service account, file
#                   ownership, migrations and systemctl are only touched when installing to /.
#   --no-start      install and enable nothing in systemd; print how to start by hand.
#   --no-migrate    do not run the database migrations now (the service runs them at start).
#   --binary PATH   install this cartwise-hub instead of building one (`cargo build --locked
#                   --release -p cartwise-cloud-hub`).
#
# Installing to / needs root: run as root, or as a user with sudo (the build then runs as
# that user and only the install steps run as root).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

SERVICE=cartwise-hub
ACCOUNT=cartwise-hub

# shellcheck source=scripts/lib-install.sh
. "$repo/scripts/lib-install.sh"
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

prefix=/
start=1
migrate=1
binary=""
original_args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --no-start) start=0; shift ;;
    --no-migrate) migrate=0; shift ;;
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
    --binary=*) binary=${1#--binary=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

lib_resolve_prefix

BIN_DIR=/usr/local/bin
CONFIG_DIR=/etc/cartwise
CONFIG=$CONFIG_DIR/hub.env
DATA_DIR=/var/lib/cartwise-hub
UNIT=/etc/systemd/system/$SERVICE.service
UNIT_SOURCE=$repo/cloud-hub/deploy/$SERVICE.service
CONFIG_SOURCE=$repo/cloud-hub/deploy/hub.env.example
ALERTS_SOURCE=$repo/cloud-hub/deploy/alerts.yml
ALERTS=/usr/local/share/cartwise/hub-alerts.yml

# --- the binary ------------------------------------------------------------------------------

if [ -z "$binary" ]; then
  command -v cargo >/dev/null || die "cargo is not on PATH; build elsewhere and pass --binary PATH \
(cargo build --locked --release -p cartwise-cloud-hub)"
  say "building the release binary (cargo build --locked --release -p cartwise-cloud-hub)"
  (cd "$repo" && cargo build --locked --release -p cartwise-cloud-hub --bins)
  binary=${CARGO_TARGET_DIR:-$repo/target}/release/cartwise-hub
fi
[ -f "$binary" ] && [ -x "$binary" ] || die "$binary is not an executable file"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

lib_reexec_as_root "$0" "$binary" "${original_args[@]}"

for source in "$UNIT_SOURCE" "$CONFIG_SOURCE" "$ALERTS_SOURCE"; do
  [ -f "$source" ] || die "missing $source"
done

say "binary"
if install_file "$binary" "$(root_path "$BIN_DIR/cartwise-hub")" 0755; then restart_needed=1; fi
install_file "$ALERTS_SOURCE" "$(root_path "$ALERTS")" 0644 || true

# --- the account -----------------------------------------------------------------------------

say "service account"
if [ "$live" = 1 ]; then
  nologin=$(command -v nologin || echo /usr/sbin/nologin)
  if getent passwd "$ACCOUNT" >/dev/null; then
    note "exists     user $ACCOUNT"
  else
    useradd --system --user-group --no-create-home --home-dir "$DATA_DIR" \
      --shell "$nologin" --comment "CartWise cloud hub" "$ACCOUNT"
    note "created    user $ACCOUNT (system, no login shell)"
    changed+=("user $ACCOUNT")
  fi
else
  note "skipped    user $ACCOUNT and file ownership: staging into $prefix"
  note "           (they are set up when installing to /)"
fi

# --- data directory --------------------------------------------------------------------------

install_data_dir "$DATA_DIR"

# --- configuration ---------------------------------------------------------------------------

install_config "$CONFIG_SOURCE" "$CONFIG" "set DATABASE_URL for this server"

# --- migrations ------------------------------------------------------------------------------

say "database migrations"
if [ "$live" = 0 ]; then
  note "skipped    staging into $prefix (the service migrates at every start)"
elif [ "$migrate" = 0 ]; then
  note "skipped    --no-migrate (the service migrates at every start)"
else
  database_url=$(sed -n 's/^DATABASE_URL=//p' "$config" | tail -n 1)
  if [ -z "$database_url" ]; then
    note "skipped    no DATABASE_URL in $config"
  elif DATABASE_URL=$database_url "$(root_path "$BIN_DIR/cartwise-hub")" migrate; then
    note "applied    every pending migration"
  else
    note "failed     migrations (is Postgres up and DATABASE_URL in $config right?);"
    note "           the service retries at every start"
  fi
fi

# --- systemd unit ----------------------------------------------------------------------------

install_unit "the server" "sudo -u $ACCOUNT sh -c 'set -a; . $CONFIG; exec $BIN_DIR/cartwise-hub serve'"

# --- summary ---------------------------------------------------------------------------------

say "summary"
note "binary   $(root_path "$BIN_DIR/cartwise-hub")"
note "config   $config"
note "data     $data"
note "unit     $(root_path "$UNIT")"
note "alerts   $(root_path "$ALERTS") (Prometheus rules for /metrics)"
lib_changed_summary
cat <<EOT

Next steps:
  1. Edit $CONFIG: DATABASE_URL, CARTWISE_HUB_HTTP, CARTWISE_HUB_QUIC (and
     CARTWISE_HUB_MQTT for the optional MQTT bridge).
  2. sudo systemctl restart $SERVICE
  3. curl http://127.0.0.1:8080/health    (and /metrics for Prometheus)
  4. journalctl -u $SERVICE -f
  5. The first admin: sudo -u $ACCOUNT env DATABASE_URL=... $BIN_DIR/cartwise-hub user add ...
EOT
