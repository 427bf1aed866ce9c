# Sourced by soak-dev.sh and wrk-dev.sh: a separate `solrouter mock-upstream
# --echo-any-model` as the OpenAI provider and `solrouter dev` with `openai/*` pointed at
# it, both on 127.0.0.1 at ports of their own choosing. Needs BIN_DIR (the binaries) and
# RUN_DIR (their logs); sets MOCK and DEV (their pids), MOCK_URL and URL (their addresses).

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
