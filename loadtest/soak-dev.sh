#!/usr/bin/env bash
# Soak of `solrouter dev`: sustained load for DURATION_S seconds (default 600) through the
# load generator, printing the process's RSS and data-directory size every minute, so a
# state that grows with requests served shows as a rising column. Release builds:
#
#   cargo build --release -p solrouter-gateway -p solrouter-loadtest
#   loadtest/soak-dev.sh            # DURATION_S=600 CONCURRENCY=4 by default
#
# Everything it starts listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION_S=${DURATION_S:-600}
CONCURRENCY=${CONCURRENCY:-4}
BIN=target/release
DATA=$(mktemp -d)
LOG=$DATA/dev.log
export SOLROUTER_ADMIN_TOKEN=${SOLROUTER_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")}

"$BIN/solrouter" dev --data-dir "$DATA/state" --listen 127.0.0.1:0 >"$LOG" 2>&1 &
DEV=$!
LOAD=
cleanup() {
    [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null || true
    kill "$DEV" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

for _ in $(seq 1 200); do
    grep -q "listening: " "$LOG" && break
    sleep 0.1
done
URL=$(sed -n 's|.*listening: \(http://[0-9.:]*\)/v1/api.*|\1|p' "$LOG" | head -1)
[ -n "$URL" ] || { echo "dev did not start:"; cat "$LOG"; exit 1; }

"$BIN/solrouter-loadtest" --gateway "$URL" --concurrency "$CONCURRENCY" \
    --requests 10000000 --duration-s "$DURATION_S" --no-direct >"$DATA/load.log" 2>&1 &
LOAD=$!

echo "minute  rss_mb  data_mb"
for minute in $(seq 1 $((DURATION_S / 60))); do
    sleep 60
    rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$DEV/status")
    data_kb=$(du -sk "$DATA/state" | cut -f1)
    printf "%6d  %6d  %7d\n" "$minute" $((rss_kb / 1024)) $((data_kb / 1024))
done
wait "$LOAD" || true
LOAD=
cat "$DATA/load.log"
