#!/usr/bin/env bash
# Runs every test: Rust unit and whole-system tests, then the real-browser test (headless Chromium).
# On a fresh machine it first installs what the tests need (Debian's chromium, the npm packages of the
# browser test); installing needs root, as on CI.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium fonts-dejavu-core)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${need_apt[@]}"
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

# Build with the same package selection as the tests, so dependencies are compiled once with one feature set.
cargo build --workspace --bins
cargo test --workspace

(cd tests/browser && node --test)
