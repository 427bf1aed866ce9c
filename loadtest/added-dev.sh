#!/usr/bin/env bash
# Issue 10's added latency on `solrouter dev`: an open loop of RATE requests a second for
# DURATION_S seconds through dev, then the same straight to its upstream (a separate
# `solrouter mock-upstream --echo-any-model`, `openai/gpt-4o-mini` pointed at it), in one
# run of the load generator, which subtracts the second from the first:
#
#   solrouter-loadtest --gateway <dev> --upstream <mock>/v1 --rate $RATE
#     --duration-s $DURATION_S --accounts 16 --keys-per-account 2
#     --model openai/gpt-4o-mini --mix $MIX
#
# Prints the load generator's summary: both phases' latency (p50 … max, and how late the
# open loop sent), the gateway's overhead (gateway − direct, per percentile), and the
# money check. Release builds:
#
#   cargo build --release -p solrouter-gateway -p solrouter-loadtest
#   loadtest/added-dev.sh                     # BIN_DIR=target/release, 2,000/s plain, 20 s
#   MIX=stream=1 loadtest/added-dev.sh        # streamed
#   SPLIT=log loadtest/added-dev.sh           # the ledger's log on tmpfs (/dev/shm)
#
# Settings (environment): BIN_DIR; RATE (2000); DURATION_S (20, each phase); MIX (plain=1);
# STATE_BASE, where the data dir goes (/tmp); SPLIT=log (the log directory on /dev/shm)
# or SPLIT=history (history and snapshots on /dev/shm), to tell the disk's share of the
# tail from the rest. Needs nothing beyond the two binaries; everything listens on
# 127.0.0.1 and is stopped at the end.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$(cd "${BIN_DIR:-$repo/target/release}" && pwd)"
RATE=${RATE:-2000}
DURATION_S=${DURATION_S:-20}
MIX=${MIX:-plain=1}
export SOLROUTER_ADMIN_TOKEN=${SOLROUTER_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")}

# shellcheck source=loadtest/dev-with-mock.sh
. "$repo/loadtest/dev-with-mock.sh"
start_split_dev_with_mock

# The progress lines go to standard error, kept aside; the summary is what stays on
# standard output. A failed run shows the end of its standard error (the reason).
"$BIN_DIR/solrouter-loadtest" --gateway "$URL" --upstream "$MOCK_URL/v1" --rate "$RATE" \
    --duration-s "$DURATION_S" --accounts 16 --keys-per-account 2 \
    --model openai/gpt-4o-mini --mix "$MIX" 2>"$RUN_DIR/load.err" ||
    { status=$?; tail -n 20 "$RUN_DIR/load.err" >&2; exit "$status"; }
