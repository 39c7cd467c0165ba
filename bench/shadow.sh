#!/usr/bin/env bash
# What a shadow arm costs the users it does not serve: p99 of the control's responses on the
# demo's `discover` placement (local hits, 1,000 hot users, wrk with 16 connections) with the
# shadow arm compared on a share of the responses (`--sample`, default 1.0: every response, the
# worst case) and without the shadow arm, alternated over the rounds so both see the same
# machine. Prints the rounds and the median p99 ratio, and writes them to bench/SHADOW.md.
#
#   bench/shadow.sh [--rounds 3] [--duration 5s] [--sample 1.0] [--pin] [--rate N]
#
# `--rate N` offers N requests/s at a fixed pace (open loop, `oha -q N --latency-correction`,
# `cargo install oha`) instead of wrk's 16 requests always in flight: below capacity, extra work
# then shows as latency rather than as lost throughput.
#
# `--pin` keeps the gateway on CPU 0 (one tokio worker) and wrk on CPU 1 (one thread), so the
# two never take each other's core: on a 2-core machine the p99 of identical rounds otherwise
# varies two- to threefold, far more than the 10% this bench is asked to resolve.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
DURATION=5s
SAMPLE=1.0
PIN=0
RATE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --sample) SAMPLE=$2; shift 2 ;;
    *) echo "usage: bench/shadow.sh [--rounds 3] [--duration 5s] [--sample 1.0] [--pin] [--rate N]" >&2; exit 2 ;;
  esac
done

source bench/common.sh wrk:wrk --
if [ -n "$RATE" ]; then
  command -v oha >/dev/null || { echo "--rate needs oha on PATH (cargo install oha)" >&2; exit 2; }
fi
CONNECTIONS=16
THREADS=$(nproc)
SERVER=()
CLIENT=()
if [ "$PIN" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "--pin needs two CPUs" >&2; exit 2; }
  SERVER=(env TOKIO_WORKER_THREADS=1 taskset -c 0)
  CLIENT=(taskset -c 1)
  THREADS=1
fi

# Two copies of the demo's experiments: the shadow compared on every response, and no shadow
# (the candidate made an ordinary arm of 0.01%, as an experiment needs two arms; one user in
# 10,000 moves off the control).
for variant in on off; do
  mkdir -p "$WORK/$variant"
  cp experiments/*.toml "$WORK/$variant/"
done
sed -i "s/^shadow_sample = .*/shadow_sample = $SAMPLE/" "$WORK/on/discover-als-shadow.toml"
python3 - "$WORK/off/discover-als-shadow.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = text.replace("weight = 100.0", "weight = 99.99")
text = re.sub(r"shadow = true.*\n", "weight = 0.01\n", text)
text = re.sub(r"shadow_sample = .*\n", "", text)
open(path, "w").write(text)
PY
grep -q 'shadow = true' "$WORK/on/discover-als-shadow.toml"
! grep -q 'shadow = true' "$WORK/off/discover-als-shadow.toml"

# p99 VARIANT -> "p99_ms requests_per_s" of a warmed run on a fresh gateway.
p99() {
  local port pid
  port=$(free_port)
  RECGW__SERVER__LISTEN="127.0.0.1:$port" RECGW__EXPERIMENTS__DIR="$WORK/$1" RUST_LOG=warn "${SERVER[@]}" "$BIN" serve &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do curl -sf "127.0.0.1:$port/ready" >/dev/null && break; sleep 0.05; done
  USERS=1000 PLACEMENT=discover "${CLIENT[@]}" wrk -t1 -c"$CONNECTIONS" -d2s -s bench/users.lua "http://127.0.0.1:$port" >/dev/null
  if [ -n "$RATE" ]; then
    "${CLIENT[@]}" oha -c "$CONNECTIONS" -q "$RATE" -z "$DURATION" --latency-correction --no-tui --output-format json \
      --rand-regex-url "http://127.0.0.1:$port/recommendations/[1-9][0-9]{0,2}\\?placement=discover" > "$WORK/oha.json"
  else
    USERS=1000 PLACEMENT=discover "${CLIENT[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/users.lua \
      "http://127.0.0.1:$port" > "$WORK/wrk.txt"
  fi
  if [ "$1" = on ]; then
    compared=$(curl -s "127.0.0.1:$port/metrics" | awk '/^shadow_comparisons_total/ && /outcome="compared"/ {s += $2} END {print s + 0}')
    [ "$compared" -gt 0 ] || { echo "no shadow comparison was made" >&2; exit 1; }
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [ -n "$RATE" ]; then
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("%.3f %.2f" % (r["latencyPercentiles"]["p99"] * 1000, r["summary"]["requestsPerSec"]))' "$WORK/oha.json"
  else
    awk '/^ +99%/ {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; p = v}
         /Requests\/sec/ {r = $2} END {printf "%.3f %s\n", p, r}' "$WORK/wrk.txt"
  fi
}

RATIOS=()
LINES=()
for round in $(seq "$ROUNDS"); do
  read -r off_p99 off_rps < <(p99 off)
  read -r on_p99 on_rps < <(p99 on)
  ratio=$(awk -v a="$on_p99" -v b="$off_p99" 'BEGIN { printf "%.3f", a / b }')
  RATIOS+=("$ratio")
  line="round $round: p99 without shadow ${off_p99} ms (${off_rps} req/s), with shadow_sample $SAMPLE ${on_p99} ms (${on_rps} req/s): ${ratio} x"
  echo "$line"
  LINES+=("- $line")
done
median=$(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
echo "median p99 with / without the shadow arm: $median x over $ROUNDS rounds"
{
  echo "# p99 of the control with and without a shadow arm"
  echo
  pinned=""
  [ "$PIN" = 1 ] && pinned=" --pin"
  [ -n "$RATE" ] && pinned="$pinned --rate $RATE"
  echo "\`bench/shadow.sh --rounds $ROUNDS --duration $DURATION --sample $SAMPLE$pinned\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD),"
  if [ "$PIN" = 1 ]; then
    echo "gateway pinned to CPU 0 with one tokio worker, the load (${RATE:+oha at $RATE requests/s, }wrk otherwise) on CPU 1 with $CONNECTIONS connections, demo \`discover\` placement, local hits."
  else
    echo "$(nproc) cores, wrk with $THREADS threads and $CONNECTIONS connections, demo \`discover\` placement, local hits."
  fi
  echo
  printf '%s\n' "${LINES[@]}"
  echo "- **median p99 ratio: $median x**"
} > bench/SHADOW.md
