#!/usr/bin/env bash
# Proves the dependency direction: schema <- sync-core <- {edge-node, cloud-hub}; fixtures and
# tests only as dev-dependencies; the daemons never depend on each other; the pure crates carry
# no runtime, network, storage or serial stack.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail=0
deny() { # deny CRATE DEP: CRATE must not depend (normal edges) on DEP
  local out
  if out=$(cargo tree --offline -p "$1" -e normal -i "$2" 2>&1) && ! grep -q "nothing to print" <<<"$out"; then
    echo "dependency direction broken: $1 depends on $2:"; echo "$out" | head -n 5; fail=1
  elif ! grep -qE "did not match any packages|nothing to print" <<<"$out"; then
    echo "cannot check $1 -> $2:"; echo "$out" | head -n 5; fail=1
  fi
}
for pure in cartwise-schema cartwise-sync-core; do
  for dep in tokio quinn rusqlite sqlx axum tokio-serial mio socket2; do deny "$pure" "$dep"; done
done
deny cartwise-schema cartwise-sync-core
deny cartwise-edge-node cartwise-cloud-hub
deny cartwise-cloud-hub cartwise-edge-node
for daemon in cartwise-schema cartwise-sync-core cartwise-edge-node cartwise-cloud-hub; do
  deny "$daemon" cartwise-fixtures
  deny "$daemon" cartwise-tests
done
[ "$fail" = 0 ] && echo "dependency direction ok"
exit "$fail"
