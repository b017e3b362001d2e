#!/usr/bin/env bash
# Instructions per forwarded packet: a per-packet cost that does not move with the machine's load (this 2-core VM's
# CPU time per packet wandered 15-30 % from one day to the next). The server runs under valgrind's callgrind with
# instrumentation off; `loadtest` drives a fanout; instrumentation is on only for the measuring window, and the
# instructions counted there are divided by the packets the server forwarded in it (its /metrics).
#
#   loadtest/callgrind.sh SERVER_BIN [SUBSCRIBERS=10] [SECONDS=10]   (SECONDS ≥ 6)
#
# LOADTEST_ARGS adds loadtest flags, e.g. LOADTEST_ARGS=--full-interceptors (subscribers that send NACKs, receiver
# reports and transport-wide CC feedback like a browser, so the server stamps every packet for it).
#
# Needs valgrind and a release build of loadtest (cargo build --release -p giaoban-loadtest). Compare builds with
# the same SUBSCRIBERS and SECONDS: the figure includes what is paid once per received packet (decrypt, parse),
# spread over the subscribers.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:?usage: loadtest/callgrind.sh SERVER_BIN [SUBSCRIBERS] [SECONDS]}")
subs=${2:-10}
secs=${3:-10}
work=$(mktemp -d /tmp/giaoban-callgrind-XXXXXX)
cat > "$work/server.sh" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$work/callgrind.out "$bin" "\$@"
EOF
chmod +x "$work/server.sh"

target/release/loadtest --spawn-server --server-bin "$work/server.sh" --subscribers "$subs" --runs 1 \
  --duration "$secs" ${LOADTEST_ARGS:-} > "$work/loadtest.log" 2>&1 &
lt=$!
wait_for() { # pattern, seconds
  for _ in $(seq 1 $(($2 * 10))); do
    grep -q "$1" "$work/loadtest.log" && return 0
    kill -0 "$lt" 2>/dev/null || { cat "$work/loadtest.log"; echo "loadtest ended early" >&2; exit 1; }
    sleep 0.1
  done
  cat "$work/loadtest.log"
  echo "no '$1' in $2 s" >&2
  exit 1
}
forwarded() {
  curl -sf "$url/metrics" | awk '$1 == "giaoban_media_rtp_forwarded_total" { print $2 }'
}
wait_for "measuring 0/" 300
url=$(grep -o "http://127.0.0.1:[0-9]*" "$work/loadtest.log" | head -1)
pid=$(pgrep -f "callgrind-out-file=$work/callgrind.out" | head -1)
callgrind_control -z "$pid" > /dev/null
callgrind_control -i on "$pid" > /dev/null
f0=$(forwarded)
# The instructions and the packets are counted over the same stretch, inside loadtest's window (which ends by
# stopping the server).
sleep $((secs - 4))
f1=$(forwarded)
callgrind_control -i off "$pid" > /dev/null
callgrind_control -d "$pid" > /dev/null
# The window's dump is part 1 (the one `callgrind_control -d` asked for); its "totals:" line, written last, holds
# the instructions (Ir) of all threads. It must be whole before loadtest's window ends and stops the server.
dump="$work/callgrind.out.1"
for _ in $(seq 1 100); do
  grep -q '^totals:' "$dump" 2>/dev/null && break
  sleep 0.1
done
wait "$lt" || true
ir=$(awk '/^totals:/ { print $2; exit }' "$dump")
[ -n "$ir" ] || { echo "callgrind's dump is incomplete: $dump" >&2; exit 1; }
packets=$((f1 - f0))
echo "server: $bin"
echo "fanout N=$subs under callgrind, $((secs - 4)) s counted inside a ${secs} s window: $ir instructions for $packets forwarded packets"
awk -v ir="$ir" -v p="$packets" 'BEGIN { if (p > 0) printf "instructions per forwarded packet: %.0f\n", ir / p }'
echo "(callgrind dump: $dump; callgrind_annotate it for where they go)"
