#!/usr/bin/env bash
# Event throughput with per-user results, on one Redis node and on a 3-node Redis Cluster. The
# demo's `home` placement (running experiment `home-als-rank`), wrk with 16 connections and
# bench/events.lua: requests alternate between GET /recommendations/{user}?placement=home, users
# uniform over 1,000,000, and POST /events with one impression of each item of that response's
# page (its tracking token, event ids unique). Events counted per second are the impressions the
# results endpoint gained over the measured run, divided by its duration (the run is read after a
# warm-up and 3 s of settling, and again 3 s after it ends, so counts flushed every second are
# in). Each round measures both builds on each topology, the before build first in odd rounds
# and this one first in even rounds, Redis flushed in between; the median of the rounds'
# after/before ratios is reported, with the CPU time Redis and the gateway spent per event.
#
#   bench/events.sh [--before OLD_RECGW_BINARY] [--rounds 3] [--duration 5s]
#
# Without --before only this build runs (no ratios). Prints the rounds and writes them to the
# events section of bench/USERS.md.
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
    *) echo "usage: bench/events.sh [--before BIN] [--rounds 3] [--duration 5s]" >&2; exit 2 ;;
  esac
done
[ -z "$BEFORE" ] || [ -x "$BEFORE" ] || { echo "--before $BEFORE is not an executable" >&2; exit 2; }

source bench/common.sh wrk:wrk redis-server:redis-server redis-cli:redis-tools --
source bench/redis.sh
CONNECTIONS=16
THREADS=$(nproc)
USERS=1000000
SECONDS_RUN=$(duration_seconds "$DURATION")

start_redis_node
NODE_URL=$REDIS_URL
NODE_PORTS=("${REDIS_PORTS[@]}")
start_redis_cluster 3
CLUSTER_URL=$REDIS_URL
CLUSTER_PORTS=("${REDIS_PORTS[@]}")

# impressions -> the impressions of every arm of home-als-rank, added
impressions() {
  curl -sf --max-time 10 "127.0.0.1:$PORT/experiments/home-als-rank/results" \
    | python3 -c 'import json,sys; print(sum(a["impressions"] for a in json.load(sys.stdin)["arms"]))'
}

# cpu_seconds PORTS... -> "REDIS GATEWAY": CPU seconds (user + system) the Redis nodes and the
# gateway (PID) have used so far
CLK=$(getconf CLK_TCK)
cpu_seconds() {
  local port redis=0 r
  for port in "$@"; do
    r=$(redis-cli -h 127.0.0.1 -p "$port" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}')
    redis=$(awk -v a="$redis" -v b="$r" 'BEGIN { print a + b }')
  done
  echo "$redis $(awk -v c="$CLK" '{print ($14 + $15) / c}' "/proc/$PID/stat")"
}

# measure BIN URL PORTS... -> EPS (events counted/s), RPS, WRK_EVENTS (accepted, rejected),
# REDIS_US and GATEWAY_US (CPU microseconds per event counted, from the first read of the
# results to the second)
measure() {
  local bin=$1 url=$2; shift 2
  flush_redis "$@"
  start_gateway "$bin" "$url"
  USERS=$USERS PLACEMENT=home wrk -t1 -c"$CONNECTIONS" -d2s -s bench/events.lua "http://127.0.0.1:$PORT" >/dev/null
  sleep 3
  local before after out cpu0 cpu1
  before=$(impressions)
  cpu0=$(cpu_seconds "$@")
  out=$(USERS=$USERS PLACEMENT=home wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/events.lua "http://127.0.0.1:$PORT")
  sleep 3
  after=$(impressions)
  cpu1=$(cpu_seconds "$@")
  stop_gateway
  read -r REDIS_US GATEWAY_US < <(awk -v a="$cpu0" -v b="$cpu1" -v n="$after" -v m="$before" 'BEGIN {
    split(a, x, " "); split(b, y, " "); e = n - m; if (e <= 0) e = 1
    printf "%.1f %.1f\n", (y[1] - x[1]) * 1e6 / e, (y[2] - x[2]) * 1e6 / e }')
  RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  EPS=$(awk -v a="$after" -v b="$before" -v s="$SECONDS_RUN" 'BEGIN { printf "%.0f", (a - b) / s }')
  WRK_EVENTS=$(awk '/^batches/ {print "accepted " $4 ", rejected " $6}' <<<"$out")
  local errors
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  [ -z "$errors" ] || WRK_EVENTS="$WRK_EVENTS, non-2xx $errors"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A EPS_OF REDIS_OF GATEWAY_OF RATIOS REDIS_RATIOS GATEWAY_RATIOS CPU_OF CELLS
ROWS=()
NAMES=(${BEFORE:+before} after)
for round in $(seq "$ROUNDS"); do
  for topology in node cluster; do
    if [ "$topology" = node ]; then url=$NODE_URL; ports=("${NODE_PORTS[@]}"); else url=$CLUSTER_URL; ports=("${CLUSTER_PORTS[@]}"); fi
    row="| $round | $topology"
    # Even rounds run this build first, so neither build always runs second.
    order=("${NAMES[@]}"); [ $((round % 2)) -eq 1 ] || order=($(printf '%s\n' "${NAMES[@]}" | tac))
    for name in "${order[@]}"; do
      bin=$BIN; [ "$name" = before ] && bin=$BEFORE
      measure "$bin" "$url" "${ports[@]}"
      EPS_OF[$name]=$EPS
      REDIS_OF[$name]=$REDIS_US
      GATEWAY_OF[$name]=$GATEWAY_US
      CPU_OF[$topology.$name.redis]="${CPU_OF[$topology.$name.redis]:-} $REDIS_US"
      CPU_OF[$topology.$name.gateway]="${CPU_OF[$topology.$name.gateway]:-} $GATEWAY_US"
      CELLS[$name]="$EPS | $RPS | $REDIS_US | $GATEWAY_US"
      echo "round $round, $topology, $name: $EPS events/s counted, $RPS requests/s ($WRK_EVENTS); CPU per event: Redis $REDIS_US us, gateway $GATEWAY_US us"
    done
    for name in "${NAMES[@]}"; do row="$row | ${CELLS[$name]}"; done
    row="$row | ${order[0]}"
    if [ -n "$BEFORE" ]; then
      ratio=$(awk -v a="${EPS_OF[after]}" -v b="${EPS_OF[before]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
      RATIOS[$topology]="${RATIOS[$topology]:-} $ratio"
      REDIS_RATIOS[$topology]="${REDIS_RATIOS[$topology]:-} $(awk -v a="${REDIS_OF[after]}" -v b="${REDIS_OF[before]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
      GATEWAY_RATIOS[$topology]="${GATEWAY_RATIOS[$topology]:-} $(awk -v a="${GATEWAY_OF[after]}" -v b="${GATEWAY_OF[before]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
      row="$row | $ratio"
    fi
    ROWS+=("$row |")
  done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
SUMMARY=()
if [ -n "$BEFORE" ]; then
  for topology in node cluster; do
    m=$(median "${RATIOS[$topology]}")
    echo "$topology: median after/before $m over $ROUNDS rounds"
    SUMMARY+=("- **$topology: events/s after/before, median $m** (rounds:${RATIOS[$topology]})")
    r=$(median "${REDIS_RATIOS[$topology]}"); g=$(median "${GATEWAY_RATIOS[$topology]}")
    echo "$topology: CPU per event after/before, median: Redis $r, gateway $g"
    SUMMARY+=("- $topology: CPU per event after/before, median: **Redis $r** (rounds:${REDIS_RATIOS[$topology]}), gateway $g (rounds:${GATEWAY_RATIOS[$topology]})")
  done
fi
for topology in node cluster; do
  line="- $topology, median CPU per event counted:"
  for name in "${NAMES[@]}"; do
    line="$line $name Redis $(median "${CPU_OF[$topology.$name.redis]}") us, gateway $(median "${CPU_OF[$topology.$name.gateway]}") us;"
  done
  echo "${line#- }"
  SUMMARY+=("${line%;}")
done

{
  echo "## Events counted per second"
  echo
  echo "\`bench/events.sh${BEFORE:+ --before $BEFORE} --rounds $ROUNDS --duration $DURATION\` on $(date -u +%Y-%m-%d), $(commit_note)."
  echo "$(machine_note), wrk with $THREADS threads and $CONNECTIONS connections (gateway, wrk and Redis share the cores)."
  echo "Requests alternate GET /recommendations/{uniform of $USERS users}?placement=home and POST /events"
  echo "with 10 impressions of that page; events/s = impressions gained in the results / $DURATION;"
  echo "requests/s counts both kinds. Redis 3-node cluster: 3 masters, no replicas, all on this machine."
  echo "CPU us/event: CPU time (user + system) of the Redis nodes, and of the gateway, from the first read of the results to"
  echo "the second (the run and 3 s of settling), per event counted: it serves the GETs too, so it is per event of this mix."
  echo "Machine load average at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  if [ -n "$BEFORE" ]; then
    echo "| round | Redis | before events/s | before requests/s | before Redis CPU us/event | before gateway CPU us/event | after events/s | after requests/s | after Redis CPU us/event | after gateway CPU us/event | ran first | after / before events/s |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  else
    echo "| round | Redis | events/s | requests/s | Redis CPU us/event | gateway CPU us/event | ran first |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
  fi
  printf '%s\n' "${ROWS[@]}"
  if [ ${#SUMMARY[@]} -gt 0 ]; then echo; printf '%s\n' "${SUMMARY[@]}"; fi
} > "$WORK/section.md"
write_section bench/USERS.md events "$WORK/section.md"
