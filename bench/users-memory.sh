#!/usr/bin/env bash
# Redis memory of the per-user state, per user of an experiment: a gateway (this build, release)
# on one Redis node serves distinct users 0, 1, 2, ... on the demo's `home` placement (running
# experiment `home-als-rank`, every user in it), walked in order by bench/walk.lua (wrk, 16
# connections, each thread its own range of ids), up to each checkpoint in turn. At each one,
# once the users stop growing in the results (new users reach their buckets every second), it
# sums `MEMORY USAGE` over every key `recgw:u:*` (the users' buckets: one small hash per arm and
# bucket, field = 8 bytes of the user's hash) and divides by the users the results count (both
# arms), and it tallies the keys' `OBJECT ENCODING` (all of them, expected `listpack`) and
# their fields (`HLEN`, one per user).
#
#   bench/users-memory.sh [--users 100000,1000000]
#
# Prints a row per checkpoint and writes them to the memory section of bench/USERS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKPOINTS=100000,1000000
while [ $# -gt 0 ]; do
  case "$1" in
    --users) CHECKPOINTS=$2; shift 2 ;;
    *) echo "usage: bench/users-memory.sh [--users 100000,1000000]" >&2; exit 2 ;;
  esac
done

source bench/common.sh wrk:wrk redis-server:redis-server redis-cli:redis-tools --
source bench/redis.sh
CONNECTIONS=16
THREADS=$(nproc)

start_redis_node
RPORT=${REDIS_PORTS[0]}
start_gateway "$BIN" "$REDIS_URL"
rcli() { redis-cli -h 127.0.0.1 -p "$RPORT" "$@"; }

# counted -> "users exposures" of every arm of home-als-rank, added
counted() {
  curl -sf --max-time 30 "127.0.0.1:$PORT/experiments/home-als-rank/results" \
    | python3 -c 'import json,sys; a=json.load(sys.stdin)["arms"]; print(sum(x["users"] for x in a), sum(x["exposures"] for x in a))'
}

ROWS=()
first=0
for n in ${CHECKPOINTS//,/ }; do
  walk=$((n - first))
  [ "$walk" -gt 0 ] || { echo "checkpoints must grow: $CHECKPOINTS" >&2; exit 2; }
  # The walk ends when every wrk thread has left its file, interrupted (SIGINT: wrk then prints
  # its figures); wrk's -d bounds a walk that loses answers (500 users/s at least, 60 s at least).
  bound=$((walk / 500)); [ "$bound" -ge 60 ] || bound=60
  rm -rf "$WORK/walk"; mkdir -p "$WORK/walk"
  started=$(date +%s%N)
  FIRST=$first USERS=$walk THREADS=$THREADS PLACEMENT=home DONE_DIR="$WORK/walk" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${bound}s" --timeout 10s -s bench/walk.lua "http://127.0.0.1:$PORT" > "$WORK/walk.txt" &
  WRK=$!
  PIDS+=("$WRK")
  while kill -0 "$WRK" 2>/dev/null; do
    [ "$(find "$WORK/walk" -name 'walked-*' | wc -l)" -ge "$THREADS" ] && { kill -INT "$WRK" 2>/dev/null || true; break; }
    sleep 0.2
  done
  wait "$WRK" || true
  took=$(awk -v a="$started" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  walked=$(awk '/^walked/ {print $2}' "$WORK/walk.txt")
  errors=$(awk '/Non-2xx/ {print $5}' "$WORK/walk.txt")
  echo "walked users $first..$((n - 1)): $walked answered in ${took}s ($(awk -v w="$walked" -v t="$took" 'BEGIN { printf "%.0f", w / t }') users/s${errors:+, non-2xx $errors})"
  first=$n
  # New users reach their buckets every second: wait 3 s, then until the count holds still.
  sleep 3
  users=""; exposures=""
  for _ in $(seq 30); do
    read -r now_users now_exposures < <(counted)
    [ "$now_users" = "$users" ] && break
    users=$now_users; exposures=$now_exposures
    sleep 1
  done

  # Every bucket key: MEMORY USAGE (exact: SAMPLES 0), OBJECT ENCODING, HLEN, in one pipeline.
  rcli --scan --pattern 'recgw:u:*' > "$WORK/keys"
  keys=$(wc -l < "$WORK/keys")
  awk '{print "MEMORY USAGE " $0 " SAMPLES 0"; print "OBJECT ENCODING " $0; print "HLEN " $0}' "$WORK/keys" \
    | rcli > "$WORK/replies"
  read -r bytes fields encodings < <(awk '
    NR % 3 == 1 { bytes += $1 }
    NR % 3 == 2 { enc[$1]++ }
    NR % 3 == 0 { fields += $1 }
    END { s = ""; for (e in enc) s = s (s == "" ? "" : ",") e ":" enc[e]; printf "%d %d %s\n", bytes, fields, s }' "$WORK/replies")
  per_user=$(awk -v b="$bytes" -v u="$users" 'BEGIN { printf "%.1f", (u > 0 ? b / u : 0) }')
  per_key=$(awk -v b="$bytes" -v k="$keys" 'BEGIN { printf "%.1f", (k > 0 ? b / k : 0) }')
  fields_per_key=$(awk -v f="$fields" -v k="$keys" 'BEGIN { printf "%.1f", (k > 0 ? f / k : 0) }')
  used=$(rcli info memory | awk -F: '/^used_memory:/ {gsub(/\r/, "", $2); print $2}')
  line="$n users walked: results count $users users ($exposures exposures); $keys keys recgw:u:*, $fields fields, $bytes bytes by MEMORY USAGE = $per_user bytes/user ($per_key bytes/key, $fields_per_key users/key); encodings $encodings; used_memory $used"
  echo "$line"
  ROWS+=("| $n | $users | $keys | $fields | $fields_per_key | $bytes | **$per_user** | $per_key | ${encodings//,/, } | $((used / 1000000)) MB |")
done
stop_gateway

{
  echo "## Redis memory per user per experiment"
  echo
  echo "\`bench/users-memory.sh --users $CHECKPOINTS\` on $(date -u +%Y-%m-%d), $(commit_note), $(machine_note)."
  echo "One Redis node (also the cache tier), one gateway; users 0, 1, 2, ... served once each on \`home\` (experiment"
  echo "\`home-als-rank\`, two arms of 50%, every user in it) up to each checkpoint in turn. Bytes: \`MEMORY USAGE key SAMPLES 0\`"
  echo "summed over every key \`recgw:u:*\` (the users' buckets; the shards' sums, days and claims are not in it), divided by"
  echo "the users the results count (\`users\` of both arms). Encodings and fields (\`HLEN\`) over every bucket key."
  echo "used_memory is the whole node's (cached recommendation lists included), for scale only."
  echo
  echo "| users walked | users counted | bucket keys | fields | users/key | bytes (MEMORY USAGE) | bytes/user | bytes/key | encodings | used_memory |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} > "$WORK/section.md"
write_section bench/USERS.md memory "$WORK/section.md"
