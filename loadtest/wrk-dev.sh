#!/usr/bin/env bash
# Issue 10's table on `solrouter dev`: `wrk -t2 -c50` (3 s of warm-up, then SECS seconds)
# straight to a separate `solrouter mock-upstream --echo-any-model` and through `solrouter
# dev` with `openai/gpt-4o-mini` pointed at it, plain and streamed; one line each with
# req/s, p50 and p99 of both and the ratio of the gateway's throughput to the mock's.
#
#   cargo build --release -p solrouter-gateway
#   loadtest/wrk-dev.sh                     # BIN_DIR=target/release, data dir under /tmp
#   SPLIT=log loadtest/wrk-dev.sh           # the ledger's log on tmpfs (/dev/shm)
#   ROUNDS=5 loadtest/wrk-dev.sh            # five rounds and the median ratios
#   LEDGER=1 loadtest/wrk-dev.sh            # plain only, with the ledger's counters
#
# Settings (environment): BIN_DIR; SECS (10); CONNS (50), wrk's connections; ROUNDS (1),
# how many times the pair of runs (straight, through dev) is repeated for each kind, with
# each round's line and at the end the median ratio and dev's median p99 (the mock alone
# swings ±20 % between runs on a 2-core VM, so one pair cannot show a change of 10 %);
# STATE_BASE, where the data dir goes (/tmp); SPLIT=log (the log directory on /dev/shm,
# the rest in STATE_BASE) or SPLIT=history (history and snapshots on /dev/shm), to tell
# the disk's parts apart; LEDGER=1 runs the plain case only through dev and prints what
# dev's ledger counters moved by (entries, commands, commit time), dev's CPU and the
# machine's time split (/proc/stat).
# Needs `wrk` (Debian: apt-get install wrk) and Python 3; everything listens on 127.0.0.1
# and is stopped at the end.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$(cd "${BIN_DIR:-$repo/target/release}" && pwd)"
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-50}
export SOLROUTER_ADMIN_TOKEN=${SOLROUTER_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")}

# shellcheck source=loadtest/dev-with-mock.sh
. "$repo/loadtest/dev-with-mock.sh"
start_split_dev_with_mock

admin() {
    curl -sf -H "Authorization: Bearer $SOLROUTER_ADMIN_TOKEN" -H "Content-Type: application/json" \
        -d "$2" "$URL/v1/admin/$1"
}
field() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
account=$(admin accounts '{"name": "wrk"}' | field id)
admin "accounts/$account/credits" '{"amount": "100000", "idempotency_key": "wrk"}' >/dev/null
KEY=$(admin "accounts/$account/keys" '{"name": "wrk"}' | field key)

for stream in false true; do
    cat >"$RUN_DIR/$stream.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"model": "openai/gpt-4o-mini", "stream": $stream, "messages": [{"role": "user", "content": "Hello there, how are you today?"}]}'
wrk.headers["Content-Type"] = "application/json"
EOF
done

# wrk against URL $1 with script $2 and key $3 for 3 s, its output ignored.
warm_up() {
    wrk -t2 -c"$CONNS" -d3s -s "$2" -H "Authorization: Bearer $3" "$1" >/dev/null
}

# The same for SECS seconds: "req/s p50 p99".
run() {
    wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s "$2" -H "Authorization: Bearer $3" "$1" |
        awk '/Requests\/sec/ {r = $2} /^ +50%/ {p50 = $2} /^ +99%/ {p99 = $2}
             END {printf "%s req/s p50 %s p99 %s", r, p50, p99}'
}

measure() {
    warm_up "$@"
    run "$@"
}

if [ -n "${LEDGER:-}" ]; then
    counters() { curl -s "$URL/metrics" | grep -E '^solrouter_ledger_(commit_seconds_(count|sum)|commands_proposed_total)\{'; }
    warm_up "$URL/v1/api/chat/completions" "$RUN_DIR/false.lua" "$KEY"
    counters >"$RUN_DIR/before"
    cpu_before=$(awk '{print $14 + $15}' "/proc/$DEV/stat")
    stat_before=$(head -1 /proc/stat)
    result=$(run "$URL/v1/api/chat/completions" "$RUN_DIR/false.lua" "$KEY")
    cpu_after=$(awk '{print $14 + $15}' "/proc/$DEV/stat")
    stat_after=$(head -1 /proc/stat)
    counters >"$RUN_DIR/after"
    python3 - "$RUN_DIR" "$result" "$((cpu_after - cpu_before))" "$(getconf CLK_TCK)" "$SECS" \
        "$stat_before" "$stat_after" <<'EOF'
import sys
run_dir, result, ticks, hz, secs, before, after = sys.argv[1:]
def counters(name):
    return {line.split("{")[0]: float(line.split()[-1]) for line in open(f"{run_dir}/{name}")}
a, b = counters("before"), counters("after")
moved = {name.removeprefix("solrouter_ledger_"): b[name] - a[name] for name in b}
rps = float(result.split()[0])
cores = int(ticks) / int(hz) / float(secs)
split = [y - x for x, y in zip(map(int, before.split()[1:]), map(int, after.split()[1:]))]
total = sum(split)
def share(*fields):
    return f"{100 * sum(split[i] for i in fields) / total:.0f} %"
print(f"dev plain: {result}")
commits = moved["commit_seconds_count"]
print(f"ledger: {commits:.0f} entries, {moved['commands_proposed_total'] / commits:.1f} commands an entry, "
      f"commit {1e6 * moved['commit_seconds_sum'] / commits:.0f} us on average")
print(f"dev CPU: {cores:.2f} cores, {1000 * cores / rps:.3f} ms a request; machine: user "
      f"{share(0)}, system {share(2)}, idle {share(3)}, iowait {share(4)}, interrupts {share(5, 6)}")
EOF
    exit 0
fi

for round in $(seq "$ROUNDS"); do
    for stream in false true; do
        mock=$(measure "$MOCK_URL/v1/chat/completions" "$RUN_DIR/$stream.lua" mock)
        dev=$(measure "$URL/v1/api/chat/completions" "$RUN_DIR/$stream.lua" "$KEY")
        ratio=$(python3 -c "print(round(${dev%% *} / ${mock%% *}, 3))")
        echo "stream=$stream  mock: $mock | dev: $dev | ratio $ratio"
        echo "$ratio ${dev##* }" >>"$RUN_DIR/rounds-$stream"
    done
done
if [ "$ROUNDS" -gt 1 ]; then
    for stream in false true; do
        python3 - "$stream" "$RUN_DIR/rounds-$stream" <<'EOF'
import statistics, sys
def ms(wrk_time):  # wrk prints 812.00us, 4.98ms or 1.02s
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if wrk_time.endswith(unit):
            return float(wrk_time[: -len(unit)]) * scale
rounds = [line.split() for line in open(sys.argv[2])]
ratios = sorted(float(ratio) for ratio, _ in rounds)
p99s = sorted(ms(p99) for _, p99 in rounds)
print(f"stream={sys.argv[1]}  median ratio {statistics.median(ratios):.3f} of {len(ratios)} rounds "
      f"({ratios[0]:.3f} to {ratios[-1]:.3f}), dev's median p99 {statistics.median(p99s):.2f} ms "
      f"({p99s[0]:.2f} to {p99s[-1]:.2f})")
EOF
    done
fi
