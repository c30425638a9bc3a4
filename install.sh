#!/usr/bin/env bash
# CartWise set-up and entry points. Idempotent: every step checks before it acts.
#
#   ./install.sh demo    install what is missing, build, start Postgres, migrate, seed, run the system
#   ./install.sh demo offline|online BRANCH_CODE   cut a branch of the running demo off the hub, or heal it
#   ./install.sh test    the same set-up, then the whole test suite (what CI runs)
#   ./install.sh deps    only install missing system packages and cargo tools
#   ./install.sh pg start|stop|url|status   the project-local Postgres cluster
#   ./install.sh edge    install the edge daemon on this Raspberry Pi (systemd)
#   ./install.sh hub     install the hub on this server (systemd)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $*"; fi
}

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  say "installing Debian packages: ${missing[*]}"
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

deps_system() {
  command -v cargo >/dev/null || die "the Rust toolchain (cargo) is required: https://rustup.rs"
  command -v cc >/dev/null || apt_install gcc libc6-dev
  command -v runuser >/dev/null || apt_install util-linux
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
  fi
  ls /usr/lib/postgresql/*/bin/psql >/dev/null 2>&1 || apt_install postgresql-client
  # The hub's MQTT bridge test runs a private Mosquitto broker.
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
}

cargo_tool() { # cargo_tool BINARY CRATE
  command -v "$1" >/dev/null && return 0
  say "installing $2 (cargo install, once)"
  cargo install --locked --quiet "$2"
}

deps_tools() {
  cargo_tool cargo-nextest cargo-nextest
  cargo_tool cargo-deny cargo-deny
}

# The kiosk page's browser test needs Debian's Chromium, Node >= 20 and playwright-core.
deps_browser() {
  command -v node >/dev/null || apt_install nodejs npm
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt 20 ]; then
    say "Node $major is older than 20: the kiosk browser test will be skipped"
    return 0
  fi
  [ -x /usr/bin/chromium ] || apt_install chromium
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    say "installing the browser test's npm packages"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
  fi
  export CARTWISE_BROWSER_TESTS=1
}

start_pg() {
  scripts/pg.sh start
  DATABASE_URL="${DATABASE_URL:-$(scripts/pg.sh url)}"
  export DATABASE_URL
}

cmd_test() {
  deps_system
  deps_tools
  deps_browser
  start_pg
  say "format"
  cargo fmt --all -- --check
  say "dependency direction"
  scripts/check-deps.sh
  say "licenses, bans and sources"
  # cargo-deny reads every package of the lock file, other platforms' too, which no Linux
  # build downloads: fetch them first (from the registry; a no-op once cached).
  cargo fetch --locked --quiet
  cargo deny --offline check licenses bans sources 2>&1 | tail -n 3
  say "clippy"
  cargo clippy --locked --workspace --all-targets -- -D warnings
  say "tests"
  cargo nextest run --locked --workspace --no-fail-fast
  say "fuzz (bounded)"
  scripts/fuzz.sh --bounded
}

cmd_demo() {
  # `demo offline|online BRANCH_CODE` talks to the running demo; nothing to set up.
  case "${1:-}" in offline|online) exec scripts/demo.sh "$@" ;; esac
  deps_system
  scripts/pg.sh status 2>/dev/null || export CARTWISE_DEMO_STOP_PG=1
  start_pg
  say "building release binaries"
  cargo build --locked --release --bins
  exec scripts/demo.sh "$@"
}

case "${1:-}" in
  demo) shift; cmd_demo "$@" ;;
  test) cmd_test ;;
  deps) deps_system; deps_tools; deps_browser ;;
  pg) shift; exec scripts/pg.sh "$@" ;;
  edge) shift; exec scripts/install-edge.sh "$@" ;;
  hub) shift; exec scripts/install-hub.sh "$@" ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
