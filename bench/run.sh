#!/usr/bin/env bash
# Load benchmark of the serving path with wrk, one gateway per scenario, all on this machine.
# Prints a table (requests/s, p50, p99) and writes it to bench/RESULTS.md.
#
#   bench/run.sh [--users N] [--duration 10s]
#
# Scenarios (each against a generated N-user × 50-item nested model, uncovered users served
# the placement default through the cache):
#   local hit   1,000 hot users, local tier on
#   redis hit   1,000 hot users, local tier off (cache.local_capacity = 0), Redis on
#   store read  users uniform over N, both tiers off
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=1000000
DURATION=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    *) echo "usage: bench/run.sh [--users N] [--duration 10s]" >&2; exit 2 ;;
  esac
done

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked --quiet
BIN="$CARGO_TARGET_DIR/release/recgw"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

MODEL="bench-${USERS}x50"
MODELS="$CARGO_TARGET_DIR/bench-models"
if [ ! -f "$MODELS/$MODEL/_SUCCESS" ]; then
  "$BIN" gen-models --out "$MODELS/$MODEL" --format nested --users "$USERS" --items 100000 --k 50 --seed 7 --partitions 8 >/dev/null
fi
mkdir -p "$WORK/experiments"
printf '[placements.bench]\ndefault_model = "%s"\n' "$MODEL" > "$WORK/experiments/placements.toml"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)

CORES=$(nproc)
CONNECTIONS=$((2 * CORES))
ROWS=()

# scenario NAME HOT_USERS LOCAL_CAPACITY REDIS_URL
scenario() {
  local name=$1 hot=$2 capacity=$3 redis=$4 port pid
  port=$(free_port)
  RECGW__SERVER__LISTEN="127.0.0.1:$port" RECGW__EXPERIMENTS__DIR="$WORK/experiments" \
    RECGW__MODELS__ROOT="$MODELS" RECGW__CACHE__LOCAL_CAPACITY="$capacity" RECGW__CACHE__REDIS_URL="$redis" \
    RUST_LOG=warn "$BIN" serve &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$port/ready" >/dev/null || { echo "gateway for $name never got ready" >&2; exit 1; }
  # Warm the caches with the hot set before measuring.
  USERS=$hot wrk -t1 -c"$CONNECTIONS" -d2s -s bench/users.lua "http://127.0.0.1:$port" >/dev/null
  local out
  out=$(USERS=$hot wrk -t"$CORES" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/users.lua "http://127.0.0.1:$port")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  ROWS+=("| $name | $rps | $p50 | $p99 | ${errors:-0} |")
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

scenario "local hit" 1000 100000 ""
scenario "redis hit" 1000 0 "redis://127.0.0.1:$REDIS_PORT"
scenario "store read" "$USERS" 0 ""

{
  echo "# Benchmark results"
  echo
  echo "\`bench/run.sh --users $USERS --duration $DURATION\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD),"
  echo "$CORES cores, wrk with $CORES threads and $CONNECTIONS connections."
  echo
  echo "| scenario | requests/s | p50 | p99 | non-2xx |"
  echo "| --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} > bench/RESULTS.md
cat bench/RESULTS.md
