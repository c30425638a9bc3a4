#!/usr/bin/env bash
# Installs the CartWise edge daemon as a systemd service on a Raspberry Pi (or any Debian with
# systemd). Idempotent: every step checks before it acts; an operator's config is never
# overwritten. Called by `./install.sh edge`.
#
#   scripts/install-edge.sh [--prefix DIR] [--no-start] [--binary PATH]
#
#   --prefix DIR    install under DIR instead of / (staging, tests). The cartwise account,
#                   file ownership and systemctl are only touched when installing to /.
#   --no-start      install and enable nothing in systemd; print how to start by hand.
#   --binary PATH   install this cartwise-edge instead of building one (`cargo build --locked
#                   --release -p cartwise-edge-node`); a cartwise-tech beside it goes too.
#
# Installing to / needs root: run as root, or as a user with sudo (the build then runs as
# that user and only the install steps run as root).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

SERVICE=cartwise-edge
ACCOUNT=cartwise
SERIAL_GROUP=dialout

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

prefix=/
start=1
binary=""
original_args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --no-start) start=0; shift ;;
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
CONFIG=$CONFIG_DIR/edge.toml
DATA_DIR=/var/lib/cartwise
UNIT=/etc/systemd/system/$SERVICE.service
UNIT_SOURCE=$repo/edge-node/deploy/$SERVICE.service
CONFIG_SOURCE=$repo/edge-node/config.example.toml

is_root=0
[ "$(id -u)" = 0 ] && is_root=1

# --- the binaries ----------------------------------------------------------------------------

if [ -z "$binary" ]; then
  command -v cargo >/dev/null || die "cargo is not on PATH; build elsewhere and pass --binary PATH \
(cargo build --locked --release -p cartwise-edge-node)"
  say "building the release binaries (cargo build --locked --release -p cartwise-edge-node)"
  (cd "$repo" && cargo build --locked --release -p cartwise-edge-node --bins)
  binary=${CARGO_TARGET_DIR:-$repo/target}/release/cartwise-edge
fi
[ -f "$binary" ] && [ -x "$binary" ] || die "$binary is not an executable file"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
tech_binary=$(dirname "$binary")/cartwise-tech

# Installing to / as an ordinary user: the build is done, the rest runs as root.
if [ "$live" = 1 ] && [ "$is_root" = 0 ]; then
  command -v sudo >/dev/null || die "installing to / needs root: run as root or install sudo"
  say "the remaining steps need root; running them with sudo"
  exec sudo -- "$0" "${original_args[@]}" --binary "$binary"
fi

[ -f "$UNIT_SOURCE" ] || die "missing $UNIT_SOURCE"
[ -f "$CONFIG_SOURCE" ] || die "missing $CONFIG_SOURCE"

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

say "binaries"
if install_file "$binary" "$(root_path "$BIN_DIR/cartwise-edge")" 0755; then restart_needed=1; fi
if [ -f "$tech_binary" ] && [ -x "$tech_binary" ]; then
  install_file "$tech_binary" "$(root_path "$BIN_DIR/cartwise-tech")" 0755 || true
else
  note "skipped    cartwise-tech (not found beside $binary)"
fi

# --- the account -----------------------------------------------------------------------------

say "service account"
if [ "$live" = 1 ]; then
  if ! getent group "$SERIAL_GROUP" >/dev/null; then
    groupadd --system "$SERIAL_GROUP"
    changed+=("group $SERIAL_GROUP")
  fi
  nologin=$(command -v nologin || echo /usr/sbin/nologin)
  if getent passwd "$ACCOUNT" >/dev/null; then
    note "exists     user $ACCOUNT"
  else
    useradd --system --user-group --no-create-home --home-dir "$DATA_DIR" \
      --shell "$nologin" --comment "CartWise edge node" "$ACCOUNT"
    note "created    user $ACCOUNT (system, no login shell)"
    changed+=("user $ACCOUNT")
  fi
  if id -nG "$ACCOUNT" | tr ' ' '\n' | grep -qx "$SERIAL_GROUP"; then
    note "exists     $ACCOUNT in group $SERIAL_GROUP (serial ports)"
  else
    usermod -a -G "$SERIAL_GROUP" "$ACCOUNT"
    note "added      $ACCOUNT to group $SERIAL_GROUP (serial ports)"
    changed+=("group membership")
    restart_needed=1
  fi
else
  note "skipped    user $ACCOUNT, group $SERIAL_GROUP and file ownership: staging into $prefix"
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
    note "kept       $config (still the example: edit it for this Pi)"
  else
    note "kept       $config (yours; compare with $CONFIG_SOURCE after upgrades)"
  fi
else
  # 0640 root:cartwise: the node reads it; it may hold the SMS API token.
  install -m 0640 "$CONFIG_SOURCE" "$config"
  [ "$live" = 1 ] && chown "root:$ACCOUNT" "$config"
  note "created    $config from the example"
  changed+=("$config")
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
  say "not starting the service ($why); to start it by hand on the Pi:"
  note "sudo systemctl daemon-reload"
  note "sudo systemctl enable --now $SERVICE"
  note "without systemd: sudo -u $ACCOUNT $BIN_DIR/cartwise-edge run --config $CONFIG"
fi

# --- summary ---------------------------------------------------------------------------------

say "summary"
note "binary   $(root_path "$BIN_DIR/cartwise-edge")"
note "config   $config"
note "data     $data"
note "unit     $(root_path "$UNIT")"
if [ ${#changed[@]} -eq 0 ]; then
  note "nothing changed (already installed)"
else
  note "changed  ${#changed[@]} item(s)"
fi
cat <<EOF

Next steps:
  1. Edit $CONFIG: [device] id / branch_id / name as enrolled at the hub, and [bus]
     uri (serial:/dev/ttyUSB0, or a stable /dev/serial/by-id/... path) and boards
     (the DIP addresses of the CU16 boards on this Pi's bus).
  2. sudo systemctl restart $SERVICE
  3. systemctl status $SERVICE
  4. journalctl -u $SERVICE -f
  Bus check without the daemon (it holds the port):
     sudo systemctl stop $SERVICE
     sudo -u $ACCOUNT $BIN_DIR/cartwise-edge bus --bus serial:/dev/ttyUSB0 scan
EOF
