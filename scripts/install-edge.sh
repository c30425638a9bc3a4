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

# shellcheck source=scripts/lib-install.sh
. "$repo/scripts/lib-install.sh"
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

lib_resolve_prefix

BIN_DIR=/usr/local/bin
CONFIG_DIR=/etc/cartwise
CONFIG=$CONFIG_DIR/edge.toml
DATA_DIR=/var/lib/cartwise
UNIT=/etc/systemd/system/$SERVICE.service
UNIT_SOURCE=$repo/edge-node/deploy/$SERVICE.service
CONFIG_SOURCE=$repo/edge-node/config.example.toml

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

lib_reexec_as_root "$0" "$binary" "${original_args[@]}"

[ -f "$UNIT_SOURCE" ] || die "missing $UNIT_SOURCE"
[ -f "$CONFIG_SOURCE" ] || die "missing $CONFIG_SOURCE"

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

install_data_dir "$DATA_DIR"

# --- configuration ---------------------------------------------------------------------------

install_config "$CONFIG_SOURCE" "$CONFIG" "edit it for this Pi"

# --- systemd unit ----------------------------------------------------------------------------

install_unit "the Pi" "sudo -u $ACCOUNT $BIN_DIR/cartwise-edge run --config $CONFIG"

# --- summary ---------------------------------------------------------------------------------

say "summary"
note "binary   $(root_path "$BIN_DIR/cartwise-edge")"
note "config   $config"
note "data     $data"
note "unit     $(root_path "$UNIT")"
lib_changed_summary
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
