# Sourced by gateway-mode.sh and rss-streams.sh: gateway mode (`deploy/local-cluster.sh`,
# configured by what the caller exported) with a separate `solrouter mock-upstream` as a
# provider. Needs repo, SOLROUTER_BIN and RUN_DIR; sets MOCK (the mock's pid).

MOCK=

# Stops the cluster and the mock, if started, and removes RUN_DIR.
stop_cluster_with_mock() {
    "$repo/deploy/local-cluster.sh" stop >/dev/null 2>&1 || true
    [[ -n "$MOCK" ]] && kill "$MOCK" 2>/dev/null || true
    rm -rf "$RUN_DIR"
}

# Starts the mock with the arguments given, then the cluster (both stopped on exit);
# exits if the cluster does not start.
start_cluster_with_mock() {
    trap stop_cluster_with_mock EXIT
    "$SOLROUTER_BIN" mock-upstream "$@" >"$RUN_DIR/mock.log" 2>&1 &
    MOCK=$!
    "$repo/deploy/local-cluster.sh" start >"$RUN_DIR/cluster.log" 2>&1 \
        || { cat "$RUN_DIR/cluster.log" >&2; exit 1; }
}
