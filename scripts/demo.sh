#!/usr/bin/env bash
# The demo system, in the foreground until Ctrl-C: migrates and seeds the project-local
# Postgres with the fixture world, runs the hub, and for every fixture device a simulated bus of
# KR-CU16 boards (carts taken a moment after each unlock) and a `cartwise-edge` with its kiosk,
# enrolled with the hub so its rentals sync into Postgres.
# Ctrl-C (or any process dying) stops every process it started, the Postgres cluster included
# when the demo started it.
# Called by `./install.sh demo` after the set-up; expects DATABASE_URL and release binaries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin="${CARTWISE_DEMO_BIN:-$root/target/release}"
demo="$root/var/demo"
mkdir -p "$demo"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping the demo..."
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

next_port=$((hub_port + 1))
edges_json=""
kiosks=""
while IFS=$'\t' read -r device_id branch_id branch_code name boards first_post; do
  dir="$demo/$name"
  mkdir -p "$dir"
  bus_port=$(free_port "$next_port"); control_port=$(free_port $((bus_port + 1)))
  kiosk_port=$(free_port $((control_port + 1))); next_port=$((kiosk_port + 1))
  board_count=$(( $(tr -cd ',' <<<"$boards" | wc -c) + 1 ))
  "$bin/cartwise-edge" sim-board --boards "$board_count" --listen "tcp:127.0.0.1:$bus_port" \
    --control "127.0.0.1:$control_port" --auto-take-ms 1500 >"$dir/sim-board.log" 2>&1 &
  pids+=($!)
  wait_port "$bus_port" "${pids[-1]}" "$dir/sim-board.log"
  # Enroll the simulated Pi with the hub (a fresh one-time code each demo run).
  url=$("$bin/cartwise-hub" device code "$device_id" --hub-addr "127.0.0.1:$quic_port" \
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
  {\"branch_code\": \"$branch_code\", \"device_id\": \"$device_id\", \"name\": \"$name\", \"kiosk\": \"http://127.0.0.1:$kiosk_port\", \"sms_outbox\": \"$dir/sms-outbox.jsonl\", \"sim_control\": \"http://127.0.0.1:$control_port\"}"
done < <("$bin/cartwise-hub" seed fixtures/data/world.toml --list-devices)

cat >"$demo/endpoints.json" <<JSON
{"hub": {"api": "http://127.0.0.1:$hub_port/api", "health": "http://127.0.0.1:$hub_port/health", "quic": "127.0.0.1:$quic_port"},
 "database_url": "$DATABASE_URL",
 "edges": [$edges_json]}
JSON

cat <<TXT

CartWise demo is running.
  hub health:    http://127.0.0.1:$hub_port/health   (QUIC sync on 127.0.0.1:$quic_port)
  database:      $DATABASE_URL
  kiosks (each Pi, with its simulated lock boards; SMS codes go to var/demo/<pi>/sms-outbox.jsonl):
$kiosks  endpoints:     $demo/endpoints.json
  logs:          $demo/*.log, $demo/<pi>/*.log
Press Ctrl-C to stop everything.
TXT

# Exit (and clean up) as soon as any demo process ends.
wait -n "${pids[@]}"
echo "a demo process exited; see $demo/*.log"
