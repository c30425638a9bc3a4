#!/usr/bin/env bash
# The demo system, in the foreground until Ctrl-C: migrates and seeds the project-local
# Postgres with the fixture world, runs the hub with the demo users, and for every fixture
# device a simulated bus of KR-CU16 boards (carts taken a moment after each unlock) and a
# `cartwise-edge` with its kiosk, enrolled with the hub so its rentals sync into Postgres. Every
# branch reaches the hub's QUIC port through its own UDP fault proxy (`cartwise-netfault`), and
# `cartwise-loadgen` plays shoppers lending and returning carts at every kiosk.
# Ctrl-C (or any process dying) stops every process it started, the Postgres cluster included
# when the demo started it.
#
#   scripts/demo.sh                 run the demo (called by `./install.sh demo` after the set-up;
#                                   expects DATABASE_URL and release binaries)
#   scripts/demo.sh offline CODE    cut branch CODE off the hub (while the demo runs)
#   scripts/demo.sh online CODE     reconnect it
#
# Environment: CARTWISE_DEMO_BIN (binaries, default target/release), CARTWISE_DEMO_DIR (state,
# default var/demo), CARTWISE_DEMO_HUB_PORT (first HTTP port tried, default 8080),
# CARTWISE_LOADGEN_ARGS (extra `cartwise-loadgen` flags, e.g. "--lends-per-minute 6").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin="${CARTWISE_DEMO_BIN:-$root/target/release}"
demo="${CARTWISE_DEMO_DIR:-$root/var/demo}"

# `offline CODE` / `online CODE`: talk to the running demo's fault proxy of that branch.
if [ "${1:-}" = offline ] || [ "${1:-}" = online ]; then
  action=$1; code=${2:-}
  table="$demo/proxies.tsv"
  [ -f "$table" ] || { echo "no demo is running (missing $table); start one with ./install.sh demo" >&2; exit 1; }
  if [ -z "$code" ]; then
    echo "usage: ./install.sh demo $action BRANCH_CODE   (branches: $(cut -f1 "$table" | tr '\n' ' '))" >&2
    exit 2
  fi
  control=$(awk -F'\t' -v code="$code" '$1 == code {print $2}' "$table")
  [ -n "$control" ] || { echo "no branch $code in the demo; branches: $(cut -f1 "$table" | tr '\n' ' ')" >&2; exit 1; }
  verb=block; [ "$action" = online ] && verb=heal
  curl -fsS -X POST "$control/$verb" >/dev/null \
    || { echo "the fault proxy of $code did not answer at $control; is the demo still running?" >&2; exit 1; }
  if [ "$action" = offline ]; then
    echo "branch $code is cut off from the hub: its kiosks keep lending; the dashboard shows its Pis offline"
  else
    echo "branch $code is back online: its Pis reconnect and the dashboard catches up"
  fi
  exit 0
fi
[ $# -eq 0 ] || { echo "unknown demo command: $*; use offline CODE, online CODE or nothing" >&2; exit 2; }

mkdir -p "$demo"
rm -f "$demo/endpoints.json" "$demo/proxies.tsv"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping the demo..."
  rm -f "$demo/endpoints.json" "$demo/proxies.tsv"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${CARTWISE_DEMO_STOP_PG:-0}" = 1 ]; then scripts/pg.sh stop; fi
  echo "demo stopped"
}
trap cleanup INT TERM EXIT

free_port() { # free_port PREFERRED
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

wait_port() { # wait_port PORT PID LOG
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { cat "$3"; echo "a demo process failed to start"; exit 1; }
    sleep 0.1
  done
  echo "a demo process did not open port $1"; exit 1
}

"$bin/cartwise-hub" migrate --database-url "$DATABASE_URL"
"$bin/cartwise-hub" seed fixtures/data/world.toml --database-url "$DATABASE_URL"

hub_port=$(free_port "${CARTWISE_DEMO_HUB_PORT:-8080}")
"$bin/cartwise-hub" serve --database-url "$DATABASE_URL" --http "127.0.0.1:$hub_port" \
  --quic "127.0.0.1:0" >"$demo/hub.log" 2>&1 &
pids+=($!)
wait_port "$hub_port" "${pids[0]}" "$demo/hub.log"
# The QUIC endpoint took a free UDP port; the hub printed it.
quic_addr=$(awk '/hub quic listening on/ {print $5; exit}' "$demo/hub.log")
quic_port=${quic_addr##*:}
[ -n "$quic_port" ] || { cat "$demo/hub.log"; echo "the hub did not report its QUIC address"; exit 1; }

# The chain of every branch, from the fixture world.
declare -A chain_of
while IFS=$'\t' read -r branch chain; do chain_of[$branch]=$chain; done < <(awk '
  /^\[\[chains\]\]/ {m = "c"} /^\[\[chains\.branches\]\]/ {m = "b"}
  /^\[\[chains\.branches\.devices\]\]/ {m = "d"}
  /^id = / {gsub(/"/, "", $3); if (m == "c") c = $3; else if (m == "b") print $3 "\t" c}
' fixtures/data/world.toml)
devices=$("$bin/cartwise-hub" seed fixtures/data/world.toml --list-devices)

# The demo users: one of each role, scoped to the first chain and its first branch.
first_branch=$(head -n1 <<<"$devices" | cut -f2)
first_code=$(head -n1 <<<"$devices" | cut -f3)
first_chain=${chain_of[$first_branch]}
password="cartwise-demo"
printf '%s\n' "$password" >"$demo/password"
users_json=""
add_user() { # add_user LOGIN ROLE SCOPE_TEXT [FLAGS...]
  local login=$1 role=$2 scope=$3; shift 3
  local out
  if ! out=$("$bin/cartwise-hub" user add --login "$login" --role "$role" "$@" \
      --password-file "$demo/password" --database-url "$DATABASE_URL" 2>&1); then
    grep -q "already exists" <<<"$out" || { echo "$out"; echo "creating the demo user $login failed"; exit 1; }
  fi
  users_json+="${users_json:+,}
  {\"role\": \"$role\", \"login\": \"$login\", \"password\": \"$password\", \"scope\": \"$scope\"}"
}
add_user admin platform_admin "every chain"
add_user chain-admin chain_admin "chain $first_chain" --chain "$first_chain"
add_user manager branch_manager "branch $first_code" --chain "$first_chain" --branch "$first_branch"
add_user technician technician "branch $first_code" --chain "$first_chain" --branch "$first_branch"
add_user viewer viewer "chain $first_chain" --chain "$first_chain"

next_port=$((hub_port + 1))
edges_json=""
proxies_json=""
kiosks=""
declare -A proxy_of
while IFS=$'\t' read -r device_id branch_id branch_code name boards first_post; do
  # One UDP fault proxy per branch between its Pis and the hub's QUIC port.
  if [ -z "${proxy_of[$branch_code]:-}" ]; then
    udp_port=$(free_port "$next_port"); proxy_control=$(free_port $((udp_port + 1)))
    next_port=$((proxy_control + 1))
    "$bin/cartwise-netfault" --listen "127.0.0.1:$udp_port" --upstream "127.0.0.1:$quic_port" \
      --control "127.0.0.1:$proxy_control" >"$demo/netfault-$branch_code.log" 2>&1 &
    pids+=($!)
    wait_port "$proxy_control" "${pids[-1]}" "$demo/netfault-$branch_code.log"
    proxy_of[$branch_code]="127.0.0.1:$udp_port"
    printf '%s\thttp://127.0.0.1:%s\n' "$branch_code" "$proxy_control" >>"$demo/proxies.tsv"
    proxies_json+="${proxies_json:+,}
  {\"branch_code\": \"$branch_code\", \"listen\": \"127.0.0.1:$udp_port\", \"control\": \"http://127.0.0.1:$proxy_control\"}"
  fi
  dir="$demo/$name"
  mkdir -p "$dir"
  bus_port=$(free_port "$next_port"); control_port=$(free_port $((bus_port + 1)))
  kiosk_port=$(free_port $((control_port + 1))); next_port=$((kiosk_port + 1))
  board_count=$(( $(tr -cd ',' <<<"$boards" | wc -c) + 1 ))
  "$bin/cartwise-edge" sim-board --boards "$board_count" --listen "tcp:127.0.0.1:$bus_port" \
    --control "127.0.0.1:$control_port" --auto-take-ms 1500 >"$dir/sim-board.log" 2>&1 &
  pids+=($!)
  wait_port "$bus_port" "${pids[-1]}" "$dir/sim-board.log"
  # Enroll the simulated Pi with the hub (a fresh one-time code each demo run), through its
  # branch's proxy: the address given here is the one the Pi dials from then on.
  url=$("$bin/cartwise-hub" device code "$device_id" --hub-addr "${proxy_of[$branch_code]}" \
    --database-url "$DATABASE_URL" | awk '$1 == "url" {print $2}')
  "$bin/cartwise-edge" enroll --url "$url" --data "$dir/data" --force >"$dir/enroll.log" 2>&1 \
    || { cat "$dir/enroll.log"; echo "enrolling $name failed"; exit 1; }
  cat >"$dir/edge.toml" <<TOML
data_dir = "$dir/data"
[device]
id = "$device_id"
branch_id = "$branch_id"
name = "$name"
[http]
listen = "127.0.0.1:$kiosk_port"
[bus]
uri = "tcp:127.0.0.1:$bus_port"
boards = [$boards]
first_post_number = $first_post
[sms]
sender = "outbox"
path = "$dir/sms-outbox.jsonl"
TOML
  "$bin/cartwise-edge" run --config "$dir/edge.toml" >"$dir/edge.log" 2>&1 &
  pids+=($!)
  wait_port "$kiosk_port" "${pids[-1]}" "$dir/edge.log"
  kiosks+="  $branch_code $name:  http://127.0.0.1:$kiosk_port/kiosk/   (simulator: http://127.0.0.1:$control_port/state)"$'\n'
  edges_json+="${edges_json:+,}
  {\"chain\": \"${chain_of[$branch_id]}\", \"branch_code\": \"$branch_code\", \"branch_id\": \"$branch_id\", \"device_id\": \"$device_id\", \"name\": \"$name\", \"kiosk\": \"http://127.0.0.1:$kiosk_port\", \"sms_outbox\": \"$dir/sms-outbox.jsonl\", \"sim_control\": \"http://127.0.0.1:$control_port\", \"boards\": [$boards], \"first_post\": $first_post}"
done <<<"$devices"

cat >"$demo/endpoints.json.tmp" <<JSON
{"hub": {"api": "http://127.0.0.1:$hub_port/api", "dashboard": "http://127.0.0.1:$hub_port/dashboard/", "health": "http://127.0.0.1:$hub_port/health", "quic": "127.0.0.1:$quic_port"},
 "database_url": "$DATABASE_URL",
 "users": [$users_json],
 "edges": [$edges_json],
 "proxies": [$proxies_json]}
JSON
mv "$demo/endpoints.json.tmp" "$demo/endpoints.json"

# Shoppers at every kiosk, at a human pace (bounded per kiosk).
# shellcheck disable=SC2086 # the extra flags are words
"$bin/cartwise-loadgen" --endpoints "$demo/endpoints.json" ${CARTWISE_LOADGEN_ARGS:-} \
  >"$demo/loadgen.log" 2>&1 &
pids+=($!)

cat <<TXT

CartWise demo is running.
  dashboard:     http://127.0.0.1:$hub_port/dashboard/   login: admin   password: $password
                 (also chain-admin, manager, technician, viewer; same password)
  hub health:    http://127.0.0.1:$hub_port/health   (QUIC sync on 127.0.0.1:$quic_port)
  database:      $DATABASE_URL
  kiosks (each Pi, with its simulated lock boards; SMS codes go to <pi>/sms-outbox.jsonl):
$kiosks  shoppers:      cartwise-loadgen lends and returns carts at every kiosk ($demo/loadgen.log)
  cut a branch off the hub (in another shell; branches: ${!proxy_of[*]}):
                 ./install.sh demo offline ${first_code}     and back:   ./install.sh demo online ${first_code}
  endpoints:     $demo/endpoints.json
  logs:          $demo/*.log, $demo/<pi>/*.log
Press Ctrl-C to stop everything.
TXT

# Exit (and clean up) as soon as any demo process ends.
wait -n "${pids[@]}"
echo "a demo process exited; see $demo/*.log"
