#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/fuzz_targets.
#
#   scripts/fuzz.sh --bounded        each target for $CARTWISE_FUZZ_SECONDS (default 20) seconds
#   scripts/fuzz.sh TARGET [SECONDS] one target, longer (default 600 s)
#   scripts/fuzz.sh --target TARGET --seconds N   the same, with named flags
#   scripts/fuzz.sh --all --seconds N             every target for N seconds each (a long run)
#
# Targets: bundle_decode, cu16_decode, enroll_wire, inforu_answer, mqtt_topic, peer_docs,
# shopper_token, sync_frame, sync_session, tech_credential (the list is fuzz/fuzz_targets/*.rs).
# Every file under fuzz/regressions/TARGET/ is replayed on stable by the test suite
# (tests/tests/fuzz_regressions.rs checks each target has a replay).
#
# cargo-fuzz needs a nightly toolchain. Where none is installed the bounded run says so and
# exits 0: the committed corpus and every crasher under fuzz/regressions are replayed by the
# stable test suite anyway. A crash fails the run and leaves its input under fuzz/artifacts;
# commit it under fuzz/regressions/TARGET/ so it stays a regression test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ -d fuzz/fuzz_targets ] || { echo "no fuzz targets"; exit 0; }
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: skipped, no nightly toolchain (corpus and regressions are replayed by the tests)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install, once)"
  cargo install --locked --quiet cargo-fuzz
fi

run_one() { # run_one TARGET SECONDS
  local target=$1 seconds=$2 corpus="fuzz/corpus/$1"
  mkdir -p "$corpus"
  local log="fuzz/target/$target.log"
  mkdir -p fuzz/target
  echo "fuzz: $target for ${seconds}s"
  if (cd fuzz && cargo +nightly fuzz run --sanitizer none "$target" "../$corpus" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048) >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs' "$log" || tail -n 1 "$log"
  else
    tail -n 40 "$log"
    echo "fuzz: $target FAILED; the crashing input is under fuzz/artifacts/$target/"
    return 1
  fi
}

if [ "${1:-}" = "--target" ] || [ "${1:-}" = "--all" ]; then
  target="" seconds=600
  while [ $# -gt 0 ]; do
    case "$1" in
      --target) target=$2; shift 2 ;;
      --all) target=ALL; shift ;;
      --seconds) seconds=$2; shift 2 ;;
      *) echo "usage: scripts/fuzz.sh --target TARGET --seconds N | --all --seconds N" >&2; exit 2 ;;
    esac
  done
  if [ "$target" = ALL ]; then
    for file in fuzz/fuzz_targets/*.rs; do run_one "$(basename "$file" .rs)" "$seconds"; done
  else
    [ -f "fuzz/fuzz_targets/$target.rs" ] || { echo "no fuzz target $target (see fuzz/fuzz_targets/)" >&2; exit 2; }
    run_one "$target" "$seconds"
  fi
elif [ "${1:-}" = "--bounded" ]; then
  seconds=${CARTWISE_FUZZ_SECONDS:-20}
  for file in fuzz/fuzz_targets/*.rs; do run_one "$(basename "$file" .rs)" "$seconds"; done
else
  [ -n "${1:-}" ] || { echo "usage: scripts/fuzz.sh --bounded | TARGET [SECONDS]" >&2; exit 2; }
  run_one "$1" "${2:-600}"
fi
