#!/usr/bin/env bash
# A local cluster on 127.0.0.1: three ledger nodes and two gateways.
#
#   deploy/local-cluster.sh start    start everything, wait until it is ready, print endpoints
#   deploy/local-cluster.sh stop     SIGTERM everything (SIGKILL after a grace period)
#   deploy/local-cluster.sh status   which processes run and whether they are ready
#
# Settings (environment):
#   SOLROUTER_BIN          the binary (default: target/release/solrouter, else target/debug/solrouter)
#   RUN_DIR                pids, logs and data (default: ./local-cluster)
#   LEDGER_PORTS           gRPC ports of nodes 1..3 (default: "7001 7002 7003")
#   LEDGER_HTTP_PORTS      metrics/health ports of nodes 1..3 (default: "9101 9102 9103")
#   GATEWAY_PORTS          ports of the gateways (default: "8081 8082")
#   LEDGER_GROUPS          Raft groups (default: 4)
#   SOLROUTER_ADMIN_TOKEN  admin token shared by the gateways (default: generated once,
#                          kept in RUN_DIR/admin-token)
#   SOLROUTER_SESSION_SECRET  the dashboard's session secret shared by the gateways
#                          (default: generated once, kept in RUN_DIR/session-secret)
#   GATEWAY_MOCK           1 (default) serves the built-in mock provider in each gateway
#   CLUSTER_TLS            1 (default): mutual TLS between ledgers and gateways, with a
#                          development CA made once by `solrouter dev-ca` into RUN_DIR/tls
#                          (ledger-admin: --tls-ca RUN_DIR/tls/ca.pem --tls-cert
#                          RUN_DIR/tls/client.pem --tls-key RUN_DIR/tls/client-key.pem);
#                          0: plaintext gRPC (every process warns)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${SOLROUTER_BIN:-}" ]]; then
  if [[ -x "$here/target/release/solrouter" ]]; then
    SOLROUTER_BIN="$here/target/release/solrouter"
  else
    SOLROUTER_BIN="$here/target/debug/solrouter"
  fi
fi
RUN_DIR="${RUN_DIR:-$PWD/local-cluster}"
read -r -a ledger_ports <<<"${LEDGER_PORTS:-7001 7002 7003}"
read -r -a ledger_http_ports <<<"${LEDGER_HTTP_PORTS:-9101 9102 9103}"
read -r -a gateway_ports <<<"${GATEWAY_PORTS:-8081 8082}"
groups="${LEDGER_GROUPS:-4}"
gateway_mock="${GATEWAY_MOCK:-1}"
cluster_tls="${CLUSTER_TLS:-1}"
# Readiness is polled this many times, this far apart (60 s in all): a debug build on a
# loaded machine opens its stores and elects leaders in a few seconds.
ready_attempts_max=600
ready_interval_s=0.1
# After SIGTERM a process gets this many checks, this far apart (20 s), before SIGKILL:
# a gateway drains its connections, a ledger node stops its Raft groups.
stop_attempts_max=200
stop_interval_s=0.1

(( ${#ledger_ports[@]} == 3 && ${#ledger_http_ports[@]} == 3 )) \
  || { echo "LEDGER_PORTS and LEDGER_HTTP_PORTS must name 3 ports each" >&2; exit 2; }
(( ${#gateway_ports[@]} == 2 )) || { echo "GATEWAY_PORTS must name 2 ports" >&2; exit 2; }

ledger_seeds() {
  local seeds=() port
  for port in "${ledger_ports[@]}"; do seeds+=("127.0.0.1:$port"); done
  (IFS=,; echo "${seeds[*]}")
}

peers() {
  local peers=() i
  for i in 0 1 2; do peers+=("$((i + 1))=127.0.0.1:${ledger_ports[$i]}"); done
  (IFS=,; echo "${peers[*]}")
}

# Starts a process in the background with its output in RUN_DIR/NAME.log and its pid in
# RUN_DIR/NAME.pid; refuses if one with that name still runs.
launch() {
  local name="$1"; shift
  if running "$name"; then
    echo "$name already runs (pid $(cat "$RUN_DIR/$name.pid"))" >&2
    return 1
  fi
  nohup "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

running() {
  local pid_file="$RUN_DIR/$1.pid"
  [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

wait_ready() {
  local name="$1" url="$2" attempt
  for ((attempt = 0; attempt < ready_attempts_max; attempt++)); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    running "$name" || { echo "$name exited; see $RUN_DIR/$name.log" >&2; return 1; }
    sleep "$ready_interval_s"
  done
  echo "$name not ready at $url; see $RUN_DIR/$name.log" >&2
  return 1
}

start() {
  mkdir -p "$RUN_DIR"
  [[ -x "$SOLROUTER_BIN" ]] || { echo "no binary at $SOLROUTER_BIN (cargo build first)" >&2; exit 1; }
  local token_file="$RUN_DIR/admin-token"
  if [[ -n "${SOLROUTER_ADMIN_TOKEN:-}" ]]; then
    printf '%s' "$SOLROUTER_ADMIN_TOKEN" >"$token_file"
  elif [[ ! -f "$token_file" ]]; then
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$token_file"
  fi
  local secret_file="$RUN_DIR/session-secret"
  if [[ -n "${SOLROUTER_SESSION_SECRET:-}" ]]; then
    printf '%s' "$SOLROUTER_SESSION_SECRET" >"$secret_file"
  elif [[ ! -f "$secret_file" ]]; then
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$secret_file"
  fi
  chmod 600 "$secret_file"
  local ledger_tls=() gateway_tls=() tls_dir="$RUN_DIR/tls"
  if [[ "$cluster_tls" == 1 ]]; then
    if [[ ! -f "$tls_dir/ca.pem" ]]; then
      "$SOLROUTER_BIN" dev-ca --out "$tls_dir" --hosts 127.0.0.1,localhost >/dev/null
    fi
    ledger_tls=(--tls-ca "$tls_dir/ca.pem" --tls-cert "$tls_dir/ledger.pem"
      --tls-key "$tls_dir/ledger-key.pem")
    gateway_tls=(--tls-ca "$tls_dir/ca.pem" --tls-cert "$tls_dir/client.pem"
      --tls-key "$tls_dir/client-key.pem")
  fi
  local i
  for i in 0 1 2; do
    launch "ledger-$((i + 1))" "$SOLROUTER_BIN" ledger --id "$((i + 1))" \
      --listen "127.0.0.1:${ledger_ports[$i]}" --peers "$(peers)" --groups "$groups" \
      --data-dir "$RUN_DIR/ledger-$((i + 1))" --http "127.0.0.1:${ledger_http_ports[$i]}" \
      "${ledger_tls[@]}"
  done
  for i in 0 1 2; do
    wait_ready "ledger-$((i + 1))" "http://127.0.0.1:${ledger_http_ports[$i]}/readyz"
  done
  local mock_flag=()
  [[ "$gateway_mock" == 1 ]] && mock_flag=(--mock)
  for i in 0 1; do
    SOLROUTER_ADMIN_TOKEN="$(cat "$token_file")" SOLROUTER_SESSION_SECRET="$(cat "$secret_file")" \
      launch "gateway-$((i + 1))" "$SOLROUTER_BIN" \
      gateway --listen "127.0.0.1:${gateway_ports[$i]}" --ledger "$(ledger_seeds)" "${mock_flag[@]}" \
      "${gateway_tls[@]}"
  done
  for i in 0 1; do
    wait_ready "gateway-$((i + 1))" "http://127.0.0.1:${gateway_ports[$i]}/readyz"
  done
  echo "ledger: $(ledger_seeds)"
  for i in 0 1; do echo "gateway-$((i + 1)): http://127.0.0.1:${gateway_ports[$i]}/v1/api"; done
  echo "admin token: $(cat "$token_file")"
}

# SIGTERMs the named processes together, waits for all of them, and SIGKILLs any still
# running after the grace period.
stop_tier() {
  local name pids=() attempt
  for name in "$@"; do
    if [[ -f "$RUN_DIR/$name.pid" ]]; then
      pids+=("$(cat "$RUN_DIR/$name.pid")")
      kill -TERM "${pids[-1]}" 2>/dev/null || true
    fi
  done
  for ((attempt = 0; attempt < stop_attempts_max; attempt++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep "$stop_interval_s"
  done
  for name in "$@"; do
    [[ -f "$RUN_DIR/$name.pid" ]] || continue
    pid="$(cat "$RUN_DIR/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) ignored SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN_DIR/$name.pid"
    echo "stopped $name"
  done
}

stop() {
  [[ -d "$RUN_DIR" ]] || return 0
  # Gateways first, so none is left without a ledger while it drains.
  stop_tier gateway-1 gateway-2
  stop_tier ledger-1 ledger-2 ledger-3
}

status() {
  local i name url
  for i in 0 1 2; do
    name="ledger-$((i + 1))" url="http://127.0.0.1:${ledger_http_ports[$i]}/readyz"
    report "$name" "$url"
  done
  for i in 0 1; do
    name="gateway-$((i + 1))" url="http://127.0.0.1:${gateway_ports[$i]}/readyz"
    report "$name" "$url"
  done
}

report() {
  local name="$1" url="$2" state="stopped"
  if running "$name"; then
    state="running (pid $(cat "$RUN_DIR/$name.pid")), "
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then state+="ready"; else state+="not ready"; fi
  fi
  echo "$name: $state"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
