#!/usr/bin/env bash
# Soak of `solrouter dev` (issue 8's "RSS within 10 % between minute 1 and minute 10"):
# a separate `solrouter mock-upstream --echo-any-model` as the OpenAI provider, `solrouter
# dev` with `openai/gpt-4o-mini` pointed at it, and an open loop of RATE requests a second
# for DURATION_S seconds through the load generator:
#
#   solrouter-loadtest --rate $RATE --duration-s $DURATION_S --no-direct --accounts 16
#     --keys-per-account 2 --model openai/gpt-4o-mini
#
# dev's VmRSS, RssAnon and RssFile (/proc/<pid>/status) and its established client
# connections (`ss`) are sampled every second into SAMPLES (seconds since the load began,
# the three in KiB, the load average, the connections, and the machine's dirty and
# write-back page cache from /proc/meminfo in KiB). At the end it prints, per minute
# m, the median and the maximum of the samples within 30 s of m minutes, in MB, the
# samples at 60 s, dev's CPU (user + system, s), the data directory's size and the load
# generator's summary (latency, money check). Release builds:
#
#   cargo build --release -p solrouter-gateway -p solrouter-loadtest
#   loadtest/soak-dev.sh                      # BIN_DIR=target/release, 600 s at 1,000/s
#   BIN_DIR=/tmp/base loadtest/soak-dev.sh    # another build's binaries
#
# Settings (environment): BIN_DIR, RATE (1000), DURATION_S (600), SAMPLES (a file to keep
# the samples in; default a temporary one). Extra environment (MIMALLOC_PURGE_DELAY=0, …)
# reaches dev. Everything listens on 127.0.0.1 and is stopped at the end. Needs `ss`
# (iproute2) and Python 3.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$(cd "${BIN_DIR:-$repo/target/release}" && pwd)"
RATE=${RATE:-1000}
DURATION_S=${DURATION_S:-600}
RUN_DIR=$(mktemp -d)
SAMPLES=${SAMPLES:-$RUN_DIR/samples.txt}
export SOLROUTER_ADMIN_TOKEN=${SOLROUTER_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")}

# shellcheck source=loadtest/dev-with-mock.sh
. "$repo/loadtest/dev-with-mock.sh"
LOAD=
cleanup() {
    [ -z "$LOAD" ] || kill "$LOAD" 2>/dev/null || true
    stop_dev_with_mock
    wait 2>/dev/null || true
    rm -rf "$RUN_DIR/state"
}
trap cleanup EXIT

# Dirty page cache left by whatever ran before (a build's artifacts) would be written back
# in a burst during the run; one such burst came with a 100-ms stall of dev's requests
# (docs/storage.md, "A snapshot encoded into its transaction"): write it out first.
sync
start_dev_with_mock "$RUN_DIR/state"

"$BIN_DIR/solrouter-loadtest" --gateway "$URL" --rate "$RATE" --duration-s "$DURATION_S" \
    --no-direct --accounts 16 --keys-per-account 2 --model openai/gpt-4o-mini \
    >"$RUN_DIR/load.log" 2>&1 &
LOAD=$!
start=$EPOCHREALTIME
: >"$SAMPLES"
while kill -0 "$LOAD" 2>/dev/null; do
    memory=$(awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2}' "/proc/$DEV/status")
    connections=$(ss -Htn state established "( sport = :${URL##*:} )" | wc -l)
    elapsed=$(awk -v now="$EPOCHREALTIME" -v start="$start" 'BEGIN {printf "%.2f", now - start}')
    dirty=$(awk '/^(Dirty|Writeback):/ {s += $2} END {print s}' /proc/meminfo)
    echo "$elapsed $memory$(cut -d' ' -f1 /proc/loadavg) $connections $dirty" >>"$SAMPLES"
    sleep 1
done
wait "$LOAD" || true
LOAD=
ticks=$(getconf CLK_TCK)
cpu=$(awk -v t="$ticks" '{printf "%.0f", ($14 + $15) / t}' "/proc/$DEV/stat")
data=$(du -sm "$RUN_DIR/state" | cut -f1)

python3 - "$SAMPLES" <<'EOF'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
for column, name in ((1, "VmRSS"), (2, "RssAnon"), (3, "RssFile"), (5, "connections"), (6, "dirty")):
    scale = 1 if name == "connections" else 1024
    minutes = []
    for m in range(1, int(rows[-1][0] + 30) // 60 + 1):
        near = [row[column] / scale for row in rows if abs(row[0] - 60 * m) <= 30]
        if near:
            minutes.append(f"{statistics.median(near):.1f}/{max(near):.1f}")
    at_60 = [f"{row[column] / scale:.1f}" for row in rows if abs(row[0] - 60) <= 1.5]
    print(f"{name:11} minutes (median/max): {' '.join(minutes)}  at 60 s: {' '.join(at_60)}")
EOF
echo "dev CPU ${cpu} s, data directory ${data} MB"
grep -vE "^ *gateway +[0-9]+s" "$RUN_DIR/load.log"
