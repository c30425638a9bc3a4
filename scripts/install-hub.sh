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

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
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

[ -n "$prefix" ] || die "--prefix must not be empty"
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
live=0
[ "$prefix" = / ] && live=1
# Paths as the running system sees them, and where this run writes them.
root_path() { if [ "$live" = 1 ]; then printf '%s' "$1"; else printf '%s%s' "$prefix" "$1"; fi; }

BIN_DIR=/usr/local/bin
CONFIG_DIR=/etc/cartwise
CONFIG=$CONFIG_DIR/hub.env
DATA_DIR=/var/lib/cartwise-hub
UNIT=/etc/systemd/system/$SERVICE.service
UNIT_SOURCE=$repo/cloud-hub/deploy/$SERVICE.service
CONFIG_SOURCE=$repo/cloud-hub/deploy/hub.env.example
ALERTS_SOURCE=$repo/cloud-hub/deploy/alerts.yml
ALERTS=/usr/local/share/cartwise/hub-alerts.yml

is_root=0
[ "$(id -u)" = 0 ] && is_root=1

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

# Installing to / as an ordinary user: the build is done, the rest runs as root.
if [ "$live" = 1 ] && [ "$is_root" = 0 ]; then
  command -v sudo >/dev/null || die "installing to / needs root: run as root or install sudo"
  say "the remaining steps need root; running them with sudo"
  exec sudo -- "$0" "${original_args[@]}" --binary "$binary"
fi

for source in "$UNIT_SOURCE" "$CONFIG_SOURCE" "$ALERTS_SOURCE"; do
  [ -f "$source" ] || die "missing $source"
done

changed=()   # what this run changed; empty on a re-run that had nothing to do
restart_needed=0

# install_file SRC DEST MODE: copies only when the content or mode differs; replaces by rename so
# a running binary is never written over in place.
install_file() {
  local src=$1 dest=$2 mode=$3
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    note "unchanged  $dest"
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  install -m "$mode" "$src" "$dest.new.$$"
  mv -f "$dest.new.$$" "$dest"
  note "installed  $dest"
  changed+=("$dest")
  return 0
}

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

say "data directory"
data=$(root_path "$DATA_DIR")
if [ -d "$data" ]; then
  note "exists     $data"
else
  mkdir -p "$data"
  note "created    $data"
  changed+=("$data")
fi
if [ "$(stat -c %a "$data")" != 750 ]; then chmod 0750 "$data"; changed+=("mode of $data"); fi
if [ "$live" = 1 ] && [ "$(stat -c %U:%G "$data")" != "$ACCOUNT:$ACCOUNT" ]; then
  chown "$ACCOUNT:$ACCOUNT" "$data"
  changed+=("owner of $data")
fi

# --- configuration ---------------------------------------------------------------------------

say "configuration"
config=$(root_path "$CONFIG")
mkdir -p "$(dirname "$config")"
if [ -e "$config" ]; then
  if cmp -s "$CONFIG_SOURCE" "$config"; then
    note "kept       $config (still the example: set DATABASE_URL for this server)"
  else
    note "kept       $config (yours; compare with $CONFIG_SOURCE after upgrades)"
  fi
else
  # 0640 root:cartwise-hub: it holds the database password.
  install -m 0640 "$CONFIG_SOURCE" "$config"
  [ "$live" = 1 ] && chown "root:$ACCOUNT" "$config"
  note "created    $config from the example"
  changed+=("$config")
fi

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

say "systemd unit"
unit_changed=0
if install_file "$UNIT_SOURCE" "$(root_path "$UNIT")" 0644; then unit_changed=1; restart_needed=1; fi

systemd_running=0
[ "$live" = 1 ] && [ -d /run/systemd/system ] && systemd_running=1
if [ "$start" = 1 ] && [ "$systemd_running" = 1 ]; then
  say "starting $SERVICE"
  systemctl daemon-reload
  systemctl enable --now "$SERVICE"
  if [ "$restart_needed" = 1 ] || [ "$unit_changed" = 1 ]; then
    systemctl try-restart "$SERVICE"
  fi
  systemctl --no-pager --lines=0 status "$SERVICE" || true
else
  if [ "$start" = 0 ]; then why="--no-start"
  elif [ "$live" = 0 ]; then why="staging into $prefix"
  else why="systemd is not running here"; fi
  say "not starting the service ($why); to start it by hand on the server:"
  note "sudo systemctl daemon-reload"
  note "sudo systemctl enable --now $SERVICE"
  note "without systemd: sudo -u $ACCOUNT sh -c 'set -a; . $CONFIG; exec $BIN_DIR/cartwise-hub serve'"
fi

# --- summary ---------------------------------------------------------------------------------

say "summary"
note "binary   $(root_path "$BIN_DIR/cartwise-hub")"
note "config   $config"
note "data     $data"
note "unit     $(root_path "$UNIT")"
note "alerts   $(root_path "$ALERTS") (Prometheus rules for /metrics)"
if [ ${#changed[@]} -eq 0 ]; then
  note "nothing changed (already installed)"
else
  note "changed  ${#changed[@]} item(s)"
fi
cat <<EOT

Next steps:
  1. Edit $CONFIG: DATABASE_URL, CARTWISE_HUB_HTTP, CARTWISE_HUB_QUIC (and
     CARTWISE_HUB_MQTT for the optional MQTT bridge).
  2. sudo systemctl restart $SERVICE
  3. curl http://127.0.0.1:8080/health    (and /metrics for Prometheus)
  4. journalctl -u $SERVICE -f
  5. The first admin: sudo -u $ACCOUNT env DATABASE_URL=... $BIN_DIR/cartwise-hub user add ...
EOT
