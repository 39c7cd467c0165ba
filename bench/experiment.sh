#!/usr/bin/env bash
# The request clients make most: local-tier hits on a placement with a running experiment, so
# every response is assigned, counted as an exposure and given a tracking token. The demo's
# `home` placement (experiment `home-als-rank`), 1,000 hot users, Redis configured (counts and
# claims go there, as in production), wrk with 16 connections. Each round measures the bare
# baseline (a minimal poem server answering the same bytes), then each gateway, so the ratios
# compare figures taken minutes apart on the same machine; the median ratio over the rounds is
# reported.
#
#   bench/experiment.sh [--before OLD_RECGW_BINARY] [--rounds 3] [--duration 5s]
#
# With --before, the same scenario also runs on another build (e.g. the parent commit's
# `target/release/recgw`) for a before/after figure in one run, the two taking turns to go first. Prints the rounds and writes
# them to bench/EXPERIMENT.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BEFORE=""
ROUNDS=3
DURATION=5s
while [ $# -gt 0 ]; do
  case "$1" in
    --before) BEFORE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    *) echo "usage: bench/experiment.sh [--before BIN] [--rounds 3] [--duration 5s]" >&2; exit 2 ;;
  esac
done

source bench/common.sh wrk:wrk redis-server:redis-server -- baseline
CONNECTIONS=16
THREADS=$(nproc)

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)

# start BIN -> PORT, PID: the demo folders, Redis on, local tier on.
start() {
  PORT=$(free_port)
  RECGW__SERVER__LISTEN="127.0.0.1:$PORT" RECGW__CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    RECGW__TRACKING__SECRET=bench-secret-of-at-least-32-bytes RUST_LOG=warn "$1" serve &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 600); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.05; done
  curl -sf "127.0.0.1:$PORT/ready" >/dev/null || { echo "$1 never got ready" >&2; exit 1; }
}

# rps PORT -> requests/s of a warmed run (the warm-up also fills the local tier)
rps() {
  USERS=1000 PLACEMENT=home wrk -t1 -c"$CONNECTIONS" -d2s -s bench/users.lua "http://127.0.0.1:$1" >/dev/null
  USERS=1000 PLACEMENT=home wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/users.lua "http://127.0.0.1:$1" \
    | awk '/Requests\/sec/ {print $2} /Non-2xx/ {print "non-2xx " $5 > "/dev/stderr"}'
}

start "$BIN"
curl -sf "127.0.0.1:$PORT/recommendations/1?placement=home" > "$WORK/body.json"
kill "$PID"; wait "$PID" 2>/dev/null || true

declare -A RATIOS
LINES=()
for round in $(seq "$ROUNDS"); do
  BPORT=$(free_port)
  "$EXAMPLES/baseline" "127.0.0.1:$BPORT" "$WORK/body.json" &
  BPID=$!; PIDS+=("$BPID")
  for _ in $(seq 100); do curl -sf "127.0.0.1:$BPORT/recommendations/1" >/dev/null && break; sleep 0.05; done
  base=$(rps "$BPORT")
  kill "$BPID"; wait "$BPID" 2>/dev/null || true
  line="round $round: baseline $base"
  # The second gateway of a round runs on a Redis the first filled and measured a few percent
  # slower even when both are the same binary, so the order alternates between rounds.
  order="${BEFORE:+before} after"
  [ -n "$BEFORE" ] && [ $((round % 2)) -eq 0 ] && order="after before"
  for name in $order; do
    bin=$BIN; [ "$name" = before ] && bin=$BEFORE
    start "$bin"
    got=$(rps "$PORT")
    kill "$PID"; wait "$PID" 2>/dev/null || true
    ratio=$(awk -v a="$got" -v b="$base" 'BEGIN { printf "%.3f", a / b }')
    RATIOS[$name]="${RATIOS[$name]:-} $ratio"
    line="$line, $name $got ($ratio x)"
  done
  echo "$line"
  LINES+=("- $line")
done
for name in ${BEFORE:+before} after; do
  median=$(tr ' ' '\n' <<<"${RATIOS[$name]}" | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
  echo "$name: median $median x baseline over $ROUNDS rounds (home placement, local hits, 16 connections)"
  LINES+=("- **$name: median $median x baseline**")
done
{
  echo "# Local hits on an experiment placement"
  echo
  echo "\`bench/experiment.sh${BEFORE:+ --before $BEFORE} --rounds $ROUNDS --duration $DURATION\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD),"
  echo "$(nproc) cores, wrk with $THREADS threads and $CONNECTIONS connections, requests/s, ratios against the baseline of the same round."
  echo
  printf '%s\n' "${LINES[@]}"
} > bench/EXPERIMENT.md
