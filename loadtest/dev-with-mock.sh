# Sourced by soak-dev.sh, wrk-dev.sh and added-dev.sh: a separate `solrouter mock-upstream
# --echo-any-model` as the OpenAI provider and `solrouter dev` with `openai/*` pointed at
# it, both on 127.0.0.1 at ports of their own choosing. Needs BIN_DIR (the binaries) and
# RUN_DIR (their logs; `start_split_dev_with_mock` makes it); sets MOCK and DEV (their
# pids), MOCK_URL and URL (their addresses).

MOCK= DEV=

# The first line a server prints is its address.
address_of() {
    for _ in $(seq 1 300); do
        grep -q "listening: " "$1" && break
        sleep 0.1
    done
    sed -n 's|.*listening: \(http://[0-9.:]*\).*|\1|p' "$1" | head -1
}

# Starts the mock, then dev with its data directory at $1; exits if either does not start.
start_dev_with_mock() {
    "$BIN_DIR/solrouter" mock-upstream --echo-any-model --listen 127.0.0.1:0 \
        >"$RUN_DIR/mock.log" 2>&1 &
    MOCK=$!
    MOCK_URL=$(address_of "$RUN_DIR/mock.log")
    [ -n "$MOCK_URL" ] || { echo "the mock did not start:"; cat "$RUN_DIR/mock.log"; exit 1; }
    SOLROUTER_OPENAI_BASE_URL="$MOCK_URL/v1" OPENAI_API_KEY=mock \
        "$BIN_DIR/solrouter" dev --data-dir "$1" --listen 127.0.0.1:0 >"$RUN_DIR/dev.log" 2>&1 &
    DEV=$!
    URL=$(address_of "$RUN_DIR/dev.log")
    [ -n "$URL" ] || { echo "dev did not start:"; cat "$RUN_DIR/dev.log"; exit 1; }
}

# Stops dev and the mock, if started.
stop_dev_with_mock() {
    for pid in $DEV $MOCK; do kill "$pid" 2>/dev/null || true; done
}

# For wrk-dev.sh and added-dev.sh: makes RUN_DIR (under STATE_BASE, default /tmp) and SHM
# (under /dev/shm), both removed and dev and the mock stopped at exit, writes out the dirty
# page cache left by whatever ran before (a build's, which would otherwise be written back
# during the run), then starts the mock and dev with its data directory in RUN_DIR and, by
# SPLIT, a part of it on tmpfs: `log` (the ledger's log directory) or `history` (the
# history and the snapshots).
start_split_dev_with_mock() {
    RUN_DIR=$(mktemp -d -p "${STATE_BASE:-/tmp}")
    SHM=$(mktemp -d -p /dev/shm)
    trap 'stop_dev_with_mock; wait 2>/dev/null || true; rm -rf "$RUN_DIR" "$SHM"' EXIT
    local ledger="$RUN_DIR/state/ledger"
    mkdir -p "$ledger"
    case "${SPLIT:-}" in
        log) mkdir "$SHM/log" && ln -s "$SHM/log" "$ledger/log" ;;
        history) ln -s "$SHM/history.redb" "$ledger/history.redb"
                 ln -s "$SHM/snapshots.redb" "$ledger/snapshots.redb" ;;
        "") ;;
        *) echo "SPLIT is log or history"; exit 2 ;;
    esac
    sync
    start_dev_with_mock "$RUN_DIR/state"
}
