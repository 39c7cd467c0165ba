#!/usr/bin/env bash
# Load benchmark of the serving path with wrk, everything on this machine. Each scenario runs a
# fresh process; throughput is reported as a ratio of a baseline measured in the same run (a
# minimal poem server returning a pre-serialized response of the same size), because absolute
# numbers on shared machines drift. Prints one table and writes it to bench/RESULTS.md.
#
#   bench/run.sh [--users N] [--duration 10s] [--replicas 2]
#
# Scenarios, against a generated N-user x 50-item nested model served as the default of
# placement `bench`:
#   baseline    the minimal server
#   local hit   1,000 hot users, local tier on
#   redis hit   1,000 hot users, local tier off (cache.local_capacity = 0), Redis on, page reads
#   snapshot    users uniform over N, local tier off: every lookup reads the mapped snapshot
#   page read   users uniform over N, both tiers off, no snapshot (models.snapshot_max_bytes = 0)
#   mixed       Zipf-like users over N, both tiers on, 5% of requests are POST /events, then the
#               same while a new version of the model commits and loads (swap under load)
# Then, with 16 connections, on the demo's folders with Redis configured (what clients do most):
#   local hit, experiment placement   1,000 hot users on `home`, whose running experiment
#               assigns, counts and signs every response
#   assignment  GET /experiments/home-als-rank/assignment/{user}
# each after its own baseline (the minimal server answering that endpoint's bytes, 16
# connections), whose row the ratio is against.
# It also reports the snapshot's build time, file size and RSS, and how fast a restarted gateway
# is ready with the snapshot on disk.
# With --replicas 2 the mixed scenario also runs on two gateways sharing one Redis, wrk split
# over both ports, and the aggregate is compared with the single gateway.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=1000000
DURATION=10s
REPLICAS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --replicas) REPLICAS=$2; shift 2 ;;
    *) echo "usage: bench/run.sh [--users N] [--duration 10s] [--replicas 2]" >&2; exit 2 ;;
  esac
done

source bench/common.sh wrk:wrk redis-server:redis-server -- baseline
BASELINE="$EXAMPLES/baseline"
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

MODEL="bench-${USERS}x50"
MODELS="$CARGO_TARGET_DIR/bench-models"
if [ ! -f "$MODELS/$MODEL/_SUCCESS" ]; then
  "$BIN" gen-models --out "$MODELS/$MODEL" --format nested --users "$USERS" --items 100000 --k 50 --seed 7 --partitions 8 >/dev/null
fi
"$BIN" gen-models --out "$MODELS/bench-empty" --format global --items 100 --k 50 --seed 7 >/dev/null
mkdir -p "$WORK/experiments" "$WORK/empty"
printf '[placements.bench]\ndefault_model = "%s"\n' "$MODEL" > "$WORK/experiments/placements.toml"
printf '[placements.bench]\ndefault_model = "bench-empty"\n' > "$WORK/empty/placements.toml"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
REDIS="redis://127.0.0.1:$REDIS_PORT"

CORES=$(nproc)
CONNECTIONS=$((2 * CORES))
ROWS=()
BASE_RPS=""
BASE_P99=""

# start_gateway EXPERIMENTS_DIR LOCAL_CAPACITY REDIS_URL [SNAPSHOT_MAX_BYTES] -> sets PORT,
# PID, READY_MS (and SNAPSHOT_MS, once the bench model serves from its snapshot, when allowed)
start_gateway() {
  PORT=$(free_port)
  local started
  started=$(date +%s%N)
  RECGW__SERVER__LISTEN="127.0.0.1:$PORT" RECGW__EXPERIMENTS__DIR="$1" RECGW__MODELS__ROOT="${MODELS_ROOT:-$MODELS}" \
    RECGW__CACHE__LOCAL_CAPACITY="$2" RECGW__CACHE__REDIS_URL="$3" RECGW__TRACKING__SECRET=bench-secret-of-at-least-32-bytes \
    RECGW__MODELS__SNAPSHOT_DIR="$WORK/snapshots" RECGW__MODELS__SNAPSHOT_MAX_BYTES="${4:-0}" \
    RECGW__MODELS__REFRESH_INTERVAL="${REFRESH:-60s}" \
    RUST_LOG=warn "$BIN" serve &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 600); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.05; done
  curl -sf "127.0.0.1:$PORT/ready" >/dev/null || { echo "gateway never got ready" >&2; exit 1; }
  READY_MS=$(( ($(date +%s%N) - started) / 1000000 ))
  SNAPSHOT_MS=""
  if [ "${4:-0}" != 0 ]; then
    for _ in $(seq 1200); do
      curl -sf "127.0.0.1:$PORT/ready" | grep -q '"serving":"snapshot"' && break
      sleep 0.05
    done
    SNAPSHOT_MS=$(( ($(date +%s%N) - started) / 1000000 ))
  fi
}

SNAPSHOTS_ON=$((64 << 30))
snapshot_bytes() { curl -sf "127.0.0.1:$PORT/ready" | python3 -c 'import json,sys; print(max(m["snapshot_bytes"] or 0 for m in json.load(sys.stdin)["models"]))'; }

to_ms() { # wrk latency (e.g. 1.23ms, 456.00us, 1.02s) -> milliseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# start_baseline BODY_FILE -> BPORT, BPID: the minimal server answering BODY_FILE's bytes
start_baseline() {
  BPORT=$(free_port)
  "$BASELINE" "127.0.0.1:$BPORT" "$1" &
  BPID=$!; PIDS+=("$BPID")
  for _ in $(seq 100); do curl -sf "127.0.0.1:$BPORT/recommendations/1" >/dev/null && break; sleep 0.05; done
}

# measure NAME PORT SCRIPT USERS [RSS_PID]: ratios against the first row measured, or the
# first after BASE_RPS is emptied.
measure() {
  local name=$1 port=$2 script=$3 users=$4 pid=${5:-}
  USERS=$users wrk -t1 -c"$CONNECTIONS" -d2s -s "$script" "http://127.0.0.1:$port" >/dev/null
  local out rps p50 p99 p999 errors ratio p99ratio rss
  out=$(USERS=$users wrk -t"$CORES" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "http://127.0.0.1:$port")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  p999=$(awk '$1=="p999" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  rss="-"; [ -n "$pid" ] && rss="$(rss_mb "$pid") MB"
  if [ -z "$BASE_RPS" ]; then BASE_RPS=$rps; BASE_P99=$p99; fi
  ratio=$(awk -v a="$rps" -v b="$BASE_RPS" 'BEGIN { printf "%.2f", a / b }')
  p99ratio=$(awk -v a="$p99" -v b="$BASE_P99" 'BEGIN { printf "%.1f", a / b }')
  ROWS+=("| $name | $rps | $ratio | $p50 | $p99 | $p99ratio | $p999 | $rss | ${errors:-0} |")
  LAST_RPS=$rps
}

# The baseline answers with a real response body of the same size.
start_gateway "$WORK/experiments" 100000 ""
curl -sf "127.0.0.1:$PORT/recommendations/1?placement=bench" > "$WORK/body.json"
kill "$PID"; wait "$PID" 2>/dev/null || true
start_baseline "$WORK/body.json"
measure "baseline" "$BPORT" bench/users.lua 1000 "$BPID"
kill "$BPID"

start_gateway "$WORK/empty" 100000 ""
EMPTY_RSS=$(rss_mb "$PID")
kill "$PID"; wait "$PID" 2>/dev/null || true

start_gateway "$WORK/experiments" 100000 ""
STARTUP_MS=$READY_MS
LOADED_RSS=$(rss_mb "$PID")
measure "local hit" "$PORT" bench/users.lua 1000 "$PID"
kill "$PID"; wait "$PID" 2>/dev/null || true

start_gateway "$WORK/experiments" 0 "$REDIS"
measure "redis hit" "$PORT" bench/users.lua 1000 "$PID"
kill "$PID"; wait "$PID" 2>/dev/null || true

start_gateway "$WORK/experiments" 0 "" "$SNAPSHOTS_ON"
BUILD_MS=$SNAPSHOT_MS
SNAP_RSS=$(rss_mb "$PID")
SNAP_BYTES=$(snapshot_bytes)
measure "snapshot" "$PORT" bench/users.lua "$USERS" "$PID"
kill "$PID"; wait "$PID" 2>/dev/null || true
start_gateway "$WORK/experiments" 0 "" "$SNAPSHOTS_ON"
RESTART_MS=$READY_MS
RESTART_SNAPSHOT_MS=$SNAPSHOT_MS
kill "$PID"; wait "$PID" 2>/dev/null || true

start_gateway "$WORK/experiments" 0 ""
measure "page read" "$PORT" bench/users.lua "$USERS" "$PID"
kill "$PID"; wait "$PID" 2>/dev/null || true

REFRESH=1s start_gateway "$WORK/experiments" 100000 "$REDIS" "$SNAPSHOTS_ON"
measure "mixed" "$PORT" bench/mixed.lua "$USERS" "$PID"
SINGLE_RPS=$LAST_RPS
# Swap under load: the model commits again (a new version, so every cache key changes) while
# the mixed traffic goes on; the version serves by page reads until its snapshot is mapped.
BEFORE_P99=$(awk -F'|' '$2 ~ /mixed/ {gsub(/ /, "", $6); print $6}' <<<"${ROWS[-1]}")
touch "$MODELS/$MODEL/_SUCCESS"
measure "mixed, new version committing" "$PORT" bench/mixed.lua "$USERS" "$PID"
SWAP_P99=$(awk -F'|' '{gsub(/ /, "", $6); print $6}' <<<"${ROWS[-1]}")
SWAP="Swap under load: the model re-committed at the start of the second mixed run (every key changes; the new version is converted on one of the cores while the old one serves, then swapped in): p99 $SWAP_P99 ms against $BEFORE_P99 ms before ($(awk -v a="$SWAP_P99" -v b="$BEFORE_P99" 'BEGIN { printf "%.1f", a / b }') x)."
kill "$PID"; wait "$PID" 2>/dev/null || true

# The demo, 16 connections: each endpoint after a baseline answering its own bytes.
CONNECTIONS=16
MODELS_ROOT=$PWD/models start_gateway "$PWD/experiments" 100000 "$REDIS"
curl -sf "127.0.0.1:$PORT/recommendations/1?placement=home" > "$WORK/home.json"
curl -sf "127.0.0.1:$PORT/experiments/home-als-rank/assignment/1" > "$WORK/assignment.json"
kill "$PID"; wait "$PID" 2>/dev/null || true
for endpoint in home assignment; do
  case $endpoint in
    home) export PLACEMENT=home; unset ASSIGNMENT; name="local hit, experiment placement" ;;
    assignment) export ASSIGNMENT=home-als-rank; name="assignment" ;;
  esac
  start_baseline "$WORK/$endpoint.json"
  MODELS_ROOT=$PWD/models start_gateway "$PWD/experiments" 100000 "$REDIS"
  BASE_RPS=""
  measure "baseline, 16 connections, $endpoint's bytes" "$BPORT" bench/users.lua 1000 "$BPID"
  measure "$name, 16 connections" "$PORT" bench/users.lua 1000 "$PID"
  kill "$PID" "$BPID"; wait "$PID" "$BPID" 2>/dev/null || true
done
unset PLACEMENT ASSIGNMENT
CONNECTIONS=$((2 * CORES))

SCALE=""
if [ "$REPLICAS" -ge 2 ]; then
  start_gateway "$WORK/experiments" 100000 "$REDIS"; PORT_A=$PORT
  start_gateway "$WORK/experiments" 100000 "$REDIS"; PORT_B=$PORT
  half=$((CONNECTIONS / 2)); [ "$half" -ge 1 ] || half=1
  threads=$((CORES / 2)); [ "$threads" -ge 1 ] || threads=1
  WARM=()
  for port in "$PORT_A" "$PORT_B"; do
    USERS=$USERS wrk -t1 -c"$half" -d2s -s bench/mixed.lua "http://127.0.0.1:$port" >/dev/null &
    WARM+=($!)
  done
  wait "${WARM[@]}"
  USERS=$USERS wrk -t"$threads" -c"$half" -d"$DURATION" -s bench/mixed.lua "http://127.0.0.1:$PORT_A" > "$WORK/a.txt" &
  WA=$!
  USERS=$USERS wrk -t"$threads" -c"$half" -d"$DURATION" -s bench/mixed.lua "http://127.0.0.1:$PORT_B" > "$WORK/b.txt" &
  WB=$!
  wait "$WA" "$WB"
  AGG=$(awk '/Requests\/sec/ {s += $2} END {printf "%.2f", s}' "$WORK/a.txt" "$WORK/b.txt")
  SCALE="Two replicas sharing one Redis (mixed, wrk split over both ports): $AGG requests/s in all, $(awk -v a="$AGG" -v b="$SINGLE_RPS" 'BEGIN { printf "%.2f", a / b }') x the single gateway's $SINGLE_RPS."
fi

{
  echo "# Benchmark results"
  echo
  echo "\`bench/run.sh --users $USERS --duration $DURATION --replicas $REPLICAS\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD),"
  echo "$CORES cores, wrk with $CORES threads and $CONNECTIONS connections (16 in the last four rows); latencies in ms; ratios against the baseline of this run (the last two gateway rows: against the baseline row above each)."
  echo
  echo "| scenario | requests/s | x baseline | p50 | p99 | p99 x baseline | p99.9 | RSS | non-2xx |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Gateway RSS: $EMPTY_RSS MB with a 100-item global model only, $LOADED_RSS MB with the $USERS-user model loaded ($((LOADED_RSS - EMPTY_RSS)) MB more)."
  echo "Start-up to ready with the $USERS-user model: $STARTUP_MS ms."
  echo "Serving snapshot of the $USERS-user model: serving from it $BUILD_MS ms after start (page reads until then), file $((SNAP_BYTES / 1000000)) MB, gateway RSS once it is mapped $SNAP_RSS MB (the checksum check reads every page of the mapping: page cache, not heap)."
  echo "Restart with the snapshot on disk: ready in $RESTART_MS ms, serving from the snapshot at $RESTART_SNAPSHOT_MS ms."
  echo "$SWAP"
  [ -z "$SCALE" ] || echo "$SCALE"
} > bench/RESULTS.md
cat bench/RESULTS.md
