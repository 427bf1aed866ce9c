#!/usr/bin/env bash
# Plain requests a second through gateway mode (issue 10's "3 ledger processes + 2
# gateways ≥ 10,000 req/s"; docs/benchmarks.md): `deploy/local-cluster.sh` (3 ledgers + 2
# gateways, mutual TLS, LEDGER_GROUPS Raft groups, GATEWAY_MOCK=0), the OpenAI provider a
# separate `solrouter mock-upstream --echo-any-model`, and closed-loop load on both
# gateways:
#
#   solrouter-loadtest --gateway http://127.0.0.1:8081 --gateway http://127.0.0.1:8082
#     --concurrency $CONCURRENCY --duration-s $DURATION_S --mix plain=1
#     --model openai/gpt-4o-mini --no-direct --accounts 16
#
# Prints one line: requests a second, latency p50 / p99 (ms), the five processes' CPU a
# request (user + system from /proc, ms), the load generator's own CPU a request (the
# shell's `times`: it shares the machine), the load average, and the load generator's
# counts and money check. Release builds:
#
#   cargo build --release -p solrouter-gateway -p solrouter-loadtest
#   loadtest/gateway-mode.sh                      # BIN_DIR=target/release
#   BIN_DIR=/tmp/base loadtest/gateway-mode.sh    # another build's binaries
#
# Settings (environment): BIN_DIR (solrouter and solrouter-loadtest), CONCURRENCY (800),
# DURATION_S (10), LEDGER_GROUPS (1: on two cores one group is the setting), MOCK_PORT
# (19090). The cluster takes local-cluster.sh's default ports. Everything listens on
# 127.0.0.1 and is stopped at the end.
set -euo pipefail
# `times` (the harness's CPU below) prints seconds with the locale's decimal mark.
export LC_ALL=C
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$(cd "${BIN_DIR:-$repo/target/release}" && pwd)"
CONCURRENCY=${CONCURRENCY:-800}
DURATION_S=${DURATION_S:-10}
MOCK_PORT=${MOCK_PORT:-19090}

export RUN_DIR
RUN_DIR=$(mktemp -d)
export SOLROUTER_BIN="$BIN_DIR/solrouter" GATEWAY_MOCK=0 LEDGER_GROUPS=${LEDGER_GROUPS:-1}
export SOLROUTER_ADMIN_TOKEN=${SOLROUTER_ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
export OPENAI_API_KEY=sk-mock
export SOLROUTER_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1"

# shellcheck source=loadtest/cluster-with-mock.sh
. "$repo/loadtest/cluster-with-mock.sh"
start_cluster_with_mock --listen "127.0.0.1:$MOCK_PORT" --echo-any-model

# The five processes' CPU (user + system clock ticks) so far.
cpu_ticks() {
    local total=0 pid_file fields
    for pid_file in "$RUN_DIR"/ledger-*.pid "$RUN_DIR"/gateway-*.pid; do
        read -r -a fields <"/proc/$(cat "$pid_file")/stat"
        total=$((total + fields[13] + fields[14]))
    done
    echo "$total"
}

before=$(cpu_ticks)
times >"$RUN_DIR/times-before"
"$BIN_DIR/solrouter-loadtest" --gateway http://127.0.0.1:8081 --gateway http://127.0.0.1:8082 \
    --concurrency "$CONCURRENCY" --duration-s "$DURATION_S" --mix plain=1 \
    --model openai/gpt-4o-mini --no-direct --accounts 16 >"$RUN_DIR/load.log" 2>&1 || true
times >"$RUN_DIR/times-after"
after=$(cpu_ticks)

# The children's user + system seconds in `times`' second line ("0m4.730s 0m2.350s").
children_s() {
    sed -n 2p "$1" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } print s }'
}
harness_s=$(awk -v a="$(children_s "$RUN_DIR/times-after")" -v b="$(children_s "$RUN_DIR/times-before")" \
    'BEGIN { print a - b }')

counts=$(sed -n 's/^gateway: sent \([0-9]*\) *ok \([0-9]*\).*errors \([0-9]*\).*in \([0-9.]*\) s.*/\1 \2 \3 \4/p' \
    "$RUN_DIR/load.log")
read -r sent ok errors seconds <<<"${counts:-0 0 0 1}"
latency=$(sed -n '0,/latency ms/s/.*latency ms *p50 \([0-9.]*\).*p99 \([0-9.]*\) .*/p50 \1 p99 \2/p' "$RUN_DIR/load.log")
money=$(grep -m1 '^money check' "$RUN_DIR/load.log" || echo 'money check: missing')
awk -v ok="$ok" -v seconds="$seconds" -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    -v latency="$latency" -v sent="$sent" -v errors="$errors" -v money="$money" \
    -v load_average="$(cut -d' ' -f1-3 /proc/loadavg)" -v concurrency="$CONCURRENCY" \
    -v harness_s="$harness_s" \
    'BEGIN {
        printf "c%d: %.0f req/s | %s ms | CPU %.3f ms a request, harness %.3f | load %s | sent %d ok %d errors %d, %s\n",
            concurrency, ok / seconds, latency, ok ? ticks * 1000 / hz / ok : 0,
            ok ? harness_s * 1000 / ok : 0, load_average, sent, ok, errors, money
    }'
