#!/usr/bin/env bash
# The demo system, in the foreground until Ctrl-C: migrates and seeds the project-local
# Postgres with the fixture world, then runs the hub. Ctrl-C (or any process dying) stops every
# process it started, the Postgres cluster included when the demo started it.
# Called by `./install.sh demo` after the set-up; expects DATABASE_URL and release binaries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin="$root/target/release"
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

"$bin/cartwise-hub" migrate --database-url "$DATABASE_URL"
"$bin/cartwise-hub" seed fixtures/data/world.toml --database-url "$DATABASE_URL"

hub_port=$(free_port "${CARTWISE_DEMO_HUB_PORT:-8080}")
"$bin/cartwise-hub" serve --database-url "$DATABASE_URL" --http "127.0.0.1:$hub_port" \
  >"$demo/hub.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$hub_port") 2>/dev/null; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$demo/hub.log"; echo "the hub failed to start"; exit 1; }
  sleep 0.1
done

cat >"$demo/endpoints.json" <<JSON
{"hub": {"api": "http://127.0.0.1:$hub_port/api", "health": "http://127.0.0.1:$hub_port/health"},
 "database_url": "$DATABASE_URL"}
JSON

cat <<TXT

CartWise demo is running.
  hub health:    http://127.0.0.1:$hub_port/health
  database:      $DATABASE_URL
  endpoints:     $demo/endpoints.json
  logs:          $demo/*.log
Press Ctrl-C to stop everything.
TXT

# Exit (and clean up) as soon as any demo process ends.
wait -n "${pids[@]}"
echo "a demo process exited; see $demo/*.log"
