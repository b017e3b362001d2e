#!/usr/bin/env bash
# Runs every test: Rust unit and whole-system tests, then the real-browser test (headless Chromium).
# On a fresh machine it first installs what the tests need (Debian's chromium and ffmpeg, the npm packages of the
# browser test); installing needs root, as on CI (the recording test also mounts a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium fonts-dejavu-core)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# ffprobe reads the recordings in tests/tests/recording.rs.
command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
# The firewall browser tests: a local TURN server (coturn) and a namespace whose iptables drops UDP.
command -v turnserver >/dev/null 2>&1 || need_apt+=(coturn)
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

# On CI (a fresh clone, built once) incremental compilation only costs disk: its caches were ~2 GB beside the build,
# and the CI run of 2026-11-27 died with "No space left on device" while linking.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

# Build with the same package selection as the tests, so dependencies are compiled once with one feature set.
cargo build --workspace --bins
cargo test --workspace

(cd tests/browser && node --test)

# Fuzz smoke: every cargo-fuzz target replays its corpus and tries a bounded number of new inputs (fuzz/README.md).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
./fuzz/smoke.sh
