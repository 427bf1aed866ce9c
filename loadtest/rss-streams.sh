#!/usr/bin/env bash
# A gateway's memory with STREAMS streams open (issue 10; docs/benchmarks.md, "Memory per
# stream"). Gateway mode (`deploy/local-cluster.sh`: 3 ledgers + 2 gateways, mutual TLS,
# GATEWAY_MOCK=0 so the gateway process holds nothing but the gateway), its OpenAI
# provider a separate `solrouter mock-upstream --echo-any-model --tokens-per-second
# $TOKENS_PER_SECOND` (at 2, streams of ~20 events over ~9 s), and closed-loop streaming
# load on gateway-1:
#
#   solrouter-loadtest --gateway http://127.0.0.1:8081 --concurrency $STREAMS
#     --duration-s $DURATION_S --mix stream=1 --model openai/gpt-4o-mini --no-direct
#     --accounts 16
#
# UPSTREAM picks how the gateway reaches the mock: `http1` (the default) over plain
# `http://`, a connection per open stream; `h2` over `https://` with a development CA
# (`solrouter dev-ca`; the mock serves `--tls-cert`, the gateways trust the CA by
# SOLROUTER_UPSTREAM_CA_FILE), HTTP/2 by ALPN as real providers speak it, every stream on
# one connection (the mock allows H2_MAX_STREAMS streams per connection, default STREAMS:
# hyper's client waits for room on a full connection rather than opening another).
#
# gateway-1's VmRSS, RssAnon and RssFile (/proc/<pid>/status) are sampled every 0.25 s with
# its established connections to the mock and from clients (`ss`). Open streams are counted
# as upstream connections over http1 (one per stream) and as client connections over h2
# (the load generator's closed loop keeps one stream on each of its connections but for
# the moment between two); over h2 the run fails if the upstream connections ever reach
# half of STREAMS (the gateway fell back to HTTP/1). Prints one line, in MB: idle (before
# the load), at STREAMS (the median of the samples with at least 95 % of STREAMS streams
# open; RssAnon, RssFile, VmRSS), the peak VmRSS, VmRSS 5 s after the load ended, how
# many samples counted, the median of upstream connections over them and the most seen in
# any sample of the load (over h2, one per lane: more shows connections opened for
# exchanges that should have shared one), the load average, and the load generator's
# money check. Release builds:
#
#   cargo build --release -p solrouter-gateway -p solrouter-loadtest
#   loadtest/rss-streams.sh                     # BIN_DIR=target/release
#   BIN_DIR=/tmp/base loadtest/rss-streams.sh   # another build's binaries
#   UPSTREAM=h2 loadtest/rss-streams.sh         # the provider over HTTP/2 (TLS)
#
# Settings (environment): BIN_DIR (solrouter and solrouter-loadtest), UPSTREAM (http1),
# STREAMS (1000), DURATION_S (20), TOKENS_PER_SECOND (2), MOCK_PORT (19090),
# H2_MAX_STREAMS (STREAMS), SAMPLES (a file to keep the samples in: seconds, VmRSS,
# RssAnon, RssFile in KiB, upstream connections, client connections). The cluster
# takes local-cluster.sh's default ports. Everything listens on 127.0.0.1 and is stopped
# at the end. Needs `ss` (iproute2) and `curl`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$(cd "${BIN_DIR:-$repo/target/release}" && pwd)"
STREAMS=${STREAMS:-1000}
DURATION_S=${DURATION_S:-20}
TOKENS_PER_SECOND=${TOKENS_PER_SECOND:-2}
MOCK_PORT=${MOCK_PORT:-19090}
UPSTREAM=${UPSTREAM:-http1}
H2_MAX_STREAMS=${H2_MAX_STREAMS:-$STREAMS}
gateway_port=8081  # gateway-1's, local-cluster.sh's default
sample_interval_s=0.25
idle_samples=8     # 2 s of samples before the load starts
after_s=5          # the "after" sample: this long after the load generator exits

export RUN_DIR
RUN_DIR=$(mktemp -d)
export SOLROUTER_BIN="$BIN_DIR/solrouter" GATEWAY_MOCK=0
export SOLROUTER_ADMIN_TOKEN=${SOLROUTER_ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
export OPENAI_API_KEY=sk-mock
mock_args=(--listen "127.0.0.1:$MOCK_PORT" --echo-any-model --tokens-per-second "$TOKENS_PER_SECOND")
case "$UPSTREAM" in
    http1) export SOLROUTER_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" ;;
    h2)
        "$SOLROUTER_BIN" dev-ca --out "$RUN_DIR/mock-tls" --hosts 127.0.0.1 >/dev/null
        mock_args+=(--tls-cert "$RUN_DIR/mock-tls/ledger.pem" --tls-key "$RUN_DIR/mock-tls/ledger-key.pem"
            --h2-max-streams "$H2_MAX_STREAMS")
        export SOLROUTER_OPENAI_BASE_URL="https://127.0.0.1:$MOCK_PORT/v1"
        export SOLROUTER_UPSTREAM_CA_FILE="$RUN_DIR/mock-tls/ca.pem"
        ;;
    *) echo "UPSTREAM must be http1 or h2, not $UPSTREAM" >&2; exit 2 ;;
esac

# shellcheck source=loadtest/cluster-with-mock.sh
. "$repo/loadtest/cluster-with-mock.sh"
start_cluster_with_mock "${mock_args[@]}"
gateway=$(cat "$RUN_DIR/gateway-1.pid")

# One sample: seconds since the epoch, VmRSS, RssAnon, RssFile (KiB), upstream connections,
# client connections.
sample() {
    local memory upstream clients
    memory=$(awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2}' "/proc/$gateway/status")
    upstream=$(ss -Htn state established "( dport = :$MOCK_PORT )" | wc -l)
    clients=$(ss -Htn state established "( sport = :$gateway_port )" | wc -l)
    echo "$(date +%s.%N) $memory$upstream $clients"
}

samples="$RUN_DIR/samples"
for _ in $(seq "$idle_samples"); do sample >>"$samples"; sleep "$sample_interval_s"; done
"$BIN_DIR/solrouter-loadtest" --gateway "http://127.0.0.1:$gateway_port" --concurrency "$STREAMS" \
    --duration-s "$DURATION_S" --mix stream=1 --model openai/gpt-4o-mini --no-direct \
    --accounts 16 >"$RUN_DIR/load.log" 2>&1 &
load=$!
marker=$(wc -l <"$samples")
while kill -0 "$load" 2>/dev/null; do sample >>"$samples"; sleep "$sample_interval_s"; done
wait "$load" || true
after_end=$(($(date +%s%N) + after_s * 1000000000))
while (($(date +%s%N) < after_end)); do sample >>"$samples"; sleep "$sample_interval_s"; done
sample >>"$samples"
if [[ -n "${SAMPLES:-}" ]]; then cp "$samples" "$SAMPLES"; fi

# The load generator's counts ("gateway: sent N  ok N ... errors N") and money check.
outcome="$(sed -n 's/^gateway: sent \([0-9]*\) *ok \([0-9]*\).*errors \([0-9]*\).*/sent \1 ok \2 errors \3/p' \
    "$RUN_DIR/load.log"), $(grep -m1 '^money check' "$RUN_DIR/load.log" || echo 'money check: missing')"
load_average=$(cut -d' ' -f1-3 /proc/loadavg)
streams_column=5  # upstream connections
[[ "$UPSTREAM" == h2 ]] && streams_column=6  # client connections
awk -v idle="$idle_samples" -v marker="$marker" -v streams="$STREAMS" -v column="$streams_column" \
    -v upstream="$UPSTREAM" -v load_average="$load_average" -v outcome="$outcome" -v after="$after_s" '
    function median(values, count,   i, j, swap) {
        for (i = 1; i <= count; i++)
            for (j = i + 1; j <= count; j++)
                if (values[j] < values[i]) { swap = values[i]; values[i] = values[j]; values[j] = swap }
        return count % 2 ? values[(count + 1) / 2] : (values[count / 2] + values[count / 2 + 1]) / 2
    }
    { rss[NR] = $2 }
    $2 > peak { peak = $2 }
    NR > marker && $5 > upstream_most { upstream_most = $5 }
    NR <= idle { idle_rss += $2 }
    NR > marker && $column >= 0.95 * streams { n++; at_rss[n] = $2; at_anon[n] = $3; at_file[n] = $4; at_upstream[n] = $5 }
    END {
        if (n == 0) { printf "no sample had %d streams open (%s)\n", 0.95 * streams, outcome; exit 1 }
        upstream_connections = median(at_upstream, n)
        if (upstream == "h2" && upstream_connections >= streams / 2) {
            printf "%d upstream connections: not HTTP/2 (%s)\n", upstream_connections, outcome; exit 1
        }
        printf "%s | idle %.1f | at %d: anon %.1f file %.1f rss %.1f | peak %.1f | %ds after %.1f | %d samples, %d upstream connections (at most %d at once) | load %s | %s\n",
            upstream, idle_rss / idle / 1024, streams, median(at_anon, n) / 1024, median(at_file, n) / 1024,
            median(at_rss, n) / 1024, peak / 1024, after, rss[NR] / 1024, n, upstream_connections,
            upstream_most, load_average, outcome
    }' "$samples"
