#!/usr/bin/env bash
# Short fuzz run for CI: build every target, replay its corpus, then try RUNS new inputs per target.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); RUSTC_BOOTSTRAP=1 lets the stable toolchain build it.
set -euo pipefail
cd "$(dirname "$0")"
RUNS="${FUZZ_SMOKE_RUNS:-20000}"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none --debug-assertions
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  echo "fuzz smoke: $target ($RUNS new inputs after its $(ls "corpus/$target" | wc -l) corpus files)"
  # New inputs go to a scratch folder; the kept corpus only changes by hand (cmin after long runs).
  scratch="$(mktemp -d)"
  log="$scratch.log"
  status=0
  cargo fuzz run -s none --debug-assertions "$target" "$scratch" "corpus/$target" -- \
    -runs="$RUNS" -max_total_time=120 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^stat::number_of_executed_units|^Done" "$log" || true
  rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    tail -60 "$log" >&2
    echo "fuzz smoke: $target failed (exit $status); the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
