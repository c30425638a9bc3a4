# shellcheck shell=bash
# What scripts/install-edge.sh and scripts/install-hub.sh share: messages, the --prefix staging
# root, re-running as root, idempotent file installs, the data directory, the configuration
# from its example, and the systemd unit. Sourced, never run; the caller sets SERVICE, ACCOUNT,
# UNIT, UNIT_SOURCE and the variables each function names.

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# lib_resolve_prefix: makes $prefix absolute (creating it) and sets live=1 when it is /, and
# is_root=1 when running as root.
lib_resolve_prefix() {
  [ -n "$prefix" ] || die "--prefix must not be empty"
  mkdir -p "$prefix"
  prefix=$(cd "$prefix" && pwd)
  live=0
  [ "$prefix" = / ] && live=1
  is_root=0
  [ "$(id -u)" = 0 ] && is_root=1
  changed=()   # what this run changed; empty on a re-run that had nothing to do
  restart_needed=0
}

# root_path PATH: the path as this run writes it (under the staging prefix unless live).
root_path() { if [ "$live" = 1 ]; then printf '%s' "$1"; else printf '%s%s' "$prefix" "$1"; fi; }

# lib_reexec_as_root SCRIPT BINARY ARGS...: installing to / as an ordinary user: the build is
# done, the rest runs as root with the built binary.
lib_reexec_as_root() {
  local script=$1 built=$2
  shift 2
  if [ "$live" = 1 ] && [ "$is_root" = 0 ]; then
    command -v sudo >/dev/null || die "installing to / needs root: run as root or install sudo"
    say "the remaining steps need root; running them with sudo"
    exec sudo -- "$script" "$@" --binary "$built"
  fi
}

# install_file SRC DEST MODE: copies only when the content or mode differs; replaces by rename so
# a running binary is never written over in place. Returns 1 when nothing changed.
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

# install_data_dir DIR: the service's data directory, 0750, owned by $ACCOUNT when live. Sets
# data to the path written.
install_data_dir() {
  say "data directory"
  data=$(root_path "$1")
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
}

# install_config SOURCE DEST STILL_EXAMPLE: the configuration from its example, 0640
# root:$ACCOUNT (it holds secrets), never overwritten. STILL_EXAMPLE says what to edit when the
# file is still the example. Sets config to the path written.
install_config() {
  local source=$1 dest=$2 still_example=$3
  say "configuration"
  config=$(root_path "$dest")
  mkdir -p "$(dirname "$config")"
  if [ -e "$config" ]; then
    if cmp -s "$source" "$config"; then
      note "kept       $config (still the example: $still_example)"
    else
      note "kept       $config (yours; compare with $source after upgrades)"
    fi
  else
    install -m 0640 "$source" "$config"
    [ "$live" = 1 ] && chown "root:$ACCOUNT" "$config"
    note "created    $config from the example"
    changed+=("$config")
  fi
}

# install_unit WHERE BY_HAND: the systemd unit, then (live, systemd running, no --no-start)
# enable and start it, restarting when anything it runs changed; otherwise print how to start it
# by hand on WHERE, BY_HAND being the command without systemd.
install_unit() {
  local where=$1 by_hand=$2 unit_changed=0 systemd_running=0 why
  say "systemd unit"
  if install_file "$UNIT_SOURCE" "$(root_path "$UNIT")" 0644; then
    unit_changed=1
    restart_needed=1
  fi
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
    say "not starting the service ($why); to start it by hand on $where:"
    note "sudo systemctl daemon-reload"
    note "sudo systemctl enable --now $SERVICE"
    note "without systemd: $by_hand"
  fi
}

# lib_changed_summary: how many items this run changed.
lib_changed_summary() {
  if [ ${#changed[@]} -eq 0 ]; then
    note "nothing changed (already installed)"
  else
    note "changed  ${#changed[@]} item(s)"
  fi
}
