#!/usr/bin/env bash
# Runs every test: Rust unit and whole-system tests, then the real-browser test (headless Chromium).
# Needs: cargo, node/npm, /usr/bin/chromium (see .ci/run for the installs on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")"

cargo build -p giaoban-signaling --bin giaoban
cargo test --workspace

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi
(cd tests/browser && GIAOBAN_BIN="$PWD/../../target/debug/giaoban" node --test)
