#!/usr/bin/env bash
# Soak run: the mixed scenario (Zipf-like users over a two-arm experiment, 5% of requests
# posting events with the token of an earlier answer) against one gateway with Redis, for
# --duration (default 10 minutes), with a fault every --fault-every (default 60 s), in turn:
#   redis    Redis shut down (saving its data), down 3 s, started again
#   swap     a new Spark run of the treatment model committed next to the old (`als-b/*`)
#   reload   the experiment file edited (its description) and POST /admin/reload
# Then it checks, and writes to bench/SOAK.md:
#   - no 5xx and no unanswered request outside the fault windows (a window ends 5 s after its
#     fault is repaired);
#   - RSS growth under 10% between the end of warm-up (max(60 s, 20% of the run)) and the end;
#   - the results API's exposures, impressions and clicks equal what the load generator was
#     served and got 202 for, exactly (examples/soak_load.rs stops between requests, so no
#     answer is left unseen).
# The local tier is capped at 20,000 lists so it is full by the end of warm-up: its growth up
# to the cap is by design, not a leak.
#
#   bench/soak.sh [--duration 10m] [--fault-every 60s] [--users 100000] [--clients 4]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds() { # 10m, 90s, 1h or a number of seconds
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

DURATION=600
FAULT_EVERY=60
USERS=100000
CLIENTS=4
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$(seconds "$2"); shift 2 ;;
    --fault-every) FAULT_EVERY=$(seconds "$2"); shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    *) echo "usage: bench/soak.sh [--duration 10m] [--fault-every 60s] [--users N] [--clients N]" >&2; exit 2 ;;
  esac
done

source bench/common.sh redis-server:redis-server -- soak_load
LOAD="$EXAMPLES/soak_load"
now_ms() { date +%s%3N; }

# Models in Spark's layout: a global default and one folder per run for each arm.
MODELS="$WORK/models"
"$BIN" gen-models --out "$MODELS/popular" --format global --items 5000 --k 50 --seed 1 >/dev/null
"$BIN" gen-models --out "$MODELS/als-a/run-0" --format nested --users "$USERS" --items 5000 --k 50 --seed 2 --partitions 4 >/dev/null
"$BIN" gen-models --out "$MODELS/als-b/run-0" --format nested --users "$USERS" --items 5000 --k 50 --seed 3 --partitions 4 >/dev/null
mkdir -p "$WORK/experiments" "$WORK/redis"
printf '[placements.soak]\ndefault_model = "popular"\n' > "$WORK/experiments/placements.toml"
EXPERIMENT="$WORK/experiments/soak-ab.toml"
cat > "$EXPERIMENT" <<'EOF'
id = "soak-ab"
placement = "soak"
description = "soak run 0"
owner = "soak@example.com"
status = "running"
start = 2026-01-01T00:00:00Z

[[arms]]
name = "control"
weight = 50.0
model = "als-a/*"

[[arms]]
name = "treatment"
weight = 50.0
model = "als-b/*"
EOF

REDIS_PORT=$(free_port)
REDIS_PID=""
start_redis() {
  redis-server --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK/redis" --logfile "$WORK/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "redis did not start" >&2; exit 1
}
start_redis

PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
RECGW__SERVER__LISTEN="127.0.0.1:$PORT" RECGW__EXPERIMENTS__DIR="$WORK/experiments" RECGW__MODELS__ROOT="$MODELS" \
  RECGW__MODELS__REFRESH_INTERVAL=2s RECGW__CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  RECGW__CACHE__LOCAL_CAPACITY=20000 RECGW__TRACKING__SECRET=soak-secret-of-at-least-32-bytes RUST_LOG=warn \
  "$BIN" serve 2> "$WORK/gateway.log" &
GW=$!
PIDS+=("$GW")
for _ in $(seq 600); do curl -sf "$BASE/ready" >/dev/null && break; sleep 0.05; done
curl -sf "$BASE/ready" >/dev/null || { echo "gateway never got ready" >&2; cat "$WORK/gateway.log" >&2; exit 1; }

STARTED=$(now_ms)
( while kill -0 "$GW" 2>/dev/null; do
    echo "$(( ($(now_ms) - STARTED) / 1000 )) $(awk '/VmRSS/ {print $2}' "/proc/$GW/status")"
    sleep 5
  done ) > "$WORK/rss.tsv" 2>/dev/null &
PIDS+=($!)

"$LOAD" --url "$BASE" --duration "${DURATION}s" --clients "$CLIENTS" --users "$USERS" --placement soak \
  --failures "$WORK/failures.tsv" > "$WORK/summary.json" &
LOADER=$!

version_of() { curl -sf "$BASE/ready" | python3 -c 'import json,sys; print(next(m["version"] for m in json.load(sys.stdin)["models"] if m["model"] == sys.argv[1]))' "$1"; }

: > "$WORK/windows.tsv"
i=0
for (( t = FAULT_EVERY; t <= DURATION - FAULT_EVERY / 2; t += FAULT_EVERY )); do
  while [ $(( $(now_ms) - STARTED )) -lt $(( t * 1000 )) ]; do sleep 0.2; done
  i=$((i + 1))
  from=$(now_ms)
  case $((i % 3)) in
    1)
      fault=redis
      redis-cli -p "$REDIS_PORT" shutdown save >/dev/null 2>&1 || true
      wait "$REDIS_PID" 2>/dev/null || true
      sleep 3
      start_redis
      ;;
    2)
      fault=swap
      before=$(version_of "als-b/*")
      "$BIN" gen-models --out "$MODELS/als-b/run-$i" --format nested --users "$USERS" --items 5000 --k 50 \
        --seed $((100 + i)) --partitions 4 >/dev/null
      for _ in $(seq 300); do [ "$(version_of "als-b/*")" != "$before" ] && break; sleep 0.1; done
      [ "$(version_of "als-b/*")" != "$before" ] || { echo "the new run of als-b never loaded" >&2; exit 1; }
      ;;
    0)
      fault=reload
      sed -i "s/^description = .*/description = \"soak run $i\"/" "$EXPERIMENT"
      status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/admin/reload")
      [ "$status" = 200 ] || { echo "reload answered $status" >&2; exit 1; }
      ;;
  esac
  echo -e "$from\t$(now_ms)\t$fault" >> "$WORK/windows.tsv"
  echo "t=${t}s: $fault done" >&2
done
wait "$LOADER"
ENDED=$(now_ms)

# Counts buffered during a Redis outage reach Redis within a flush or two.
for _ in $(seq 100); do
  pending=$(curl -sf "$BASE/metrics" | awk '$1 == "results_pending_updates" {print $2}')
  [ "${pending:-1}" = 0 ] && break
  sleep 0.1
done
curl -sf "$BASE/experiments/soak-ab/results" > "$WORK/results.json"
FINAL_RSS=$(awk '/VmRSS/ {print $2}' "/proc/$GW/status")
echo "$(( (ENDED - STARTED) / 1000 )) $FINAL_RSS" >> "$WORK/rss.tsv"

set +e
python3 - "$WORK" "$DURATION" "$FAULT_EVERY" "$USERS" "$CLIENTS" "$(git rev-parse --short HEAD)" > bench/SOAK.md <<'PY'
import json, sys, datetime
work, duration, every, users, clients, commit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
summary = json.load(open(f"{work}/summary.json"))
results = json.load(open(f"{work}/results.json"))
windows = [l.split("\t") for l in open(f"{work}/windows.tsv").read().splitlines() if l]
windows = [(int(a), int(b) + 5000, name) for a, b, name in windows]
failures = [l.split("\t", 2) for l in open(f"{work}/failures.tsv").read().splitlines() if l]
def window_of(ms):
    return next((name for a, b, name in windows if a <= ms <= b), None)
inside = [f for f in failures if window_of(int(f[0]))]
outside = [f for f in failures if not window_of(int(f[0]))]
rss = [tuple(map(int, l.split())) for l in open(f"{work}/rss.tsv").read().splitlines() if len(l.split()) == 2]
warm_at = max(60, duration // 5)
warm = next((kb for t, kb in rss if t >= warm_at), rss[-1][1])
end = rss[-1][1]
growth = (end - warm) / warm * 100
arms = {a["name"]: a for a in results["arms"]}
got = {k: sum(a[k] for a in arms.values()) for k in ("exposures", "impressions", "clicks")}
want = {"exposures": summary["served"], "impressions": summary["impressions"], "clicks": summary["clicks"]}
checks = [
    ("no 5xx or unanswered request outside fault windows", not outside, f"{len(outside)} outside, {len(inside)} inside"),
    ("RSS growth after warm-up < 10%", growth < 10, f"{warm / 1024:.1f} MB at {warm_at} s -> {end / 1024:.1f} MB at the end ({growth:+.1f}%)"),
    ("results equal what the load generator was served and got 202 for", got == want and summary["rejected"] == 0,
     f"results {got}, load generator {want}, rejected {summary['rejected']}"),
    ("no 4xx", summary["client_errors"] == 0, f"{summary['client_errors']}"),
]
ok = all(c[1] for c in checks)
print("# Soak results\n")
print(f"`bench/soak.sh --duration {duration}s --fault-every {every}s --users {users} --clients {clients}` on "
      f"{datetime.date.today()}, commit {commit}; the gateway (release build), Redis and the load generator on one machine.\n")
print(f"Verdict: **{'pass' if ok else 'FAIL'}**\n")
print("| check | result | measured |\n| --- | --- | --- |")
for name, passed, measured in checks:
    print(f"| {name} | {'pass' if passed else 'FAIL'} | {measured} |")
print(f"\nTraffic: {summary['served']} recommendations served, {summary['event_batches']} event batches accepted "
      f"({summary['impressions']} impressions, {summary['clicks']} clicks), {summary['failures']} failed requests in all.")
print(f"\nFaults ({len(windows)}): " + ", ".join(f"{name} ({(b - 5000 - a) / 1000:.1f} s)" for a, b, name in windows) + ".")
if inside:
    print("\nFailures inside fault windows (first 5):\n")
    for f in inside[:5]:
        print(f"- {f[1]} {f[2][:200]}")
if outside:
    print("\nFailures outside fault windows (first 5):\n")
    for f in outside[:5]:
        print(f"- {f[1]} {f[2][:200]}")
print("\nRSS samples (s, MB): " + ", ".join(f"{t}: {kb / 1024:.0f}" for t, kb in rss[:: max(1, len(rss) // 12)]) + f", end: {end / 1024:.0f}")
per_arm = ", ".join(f"{n}: {a['exposures']} exposures / {a['impressions']} impressions / {a['clicks']} clicks" for n, a in arms.items())
print(f"\nPer arm: {per_arm}.")
sys.exit(0 if ok else 1)
PY
verdict=$?
set -e
cat bench/SOAK.md
exit $verdict
