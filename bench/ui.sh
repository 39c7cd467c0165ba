#!/usr/bin/env bash
# The results UI on a long experiment: the page of the demo's `home-als-rank` once it has 400
# days of counts (the most kept), against the JSON results with the same days it renders
# (`?by=day`), and the recommendations clients make while analysts keep loading the page.
#
# 400 days are written by one gateway run under libfaketime (Debian package `faketime`) with
# its clock read from a file this script moves a day at a time, sending a few users' pages and
# events each day into a Redis started here; the measured gateway then runs on the real clock
# over the same Redis. The experiment copy starts 420 days ago so every day is inside it.
#
#   bench/ui.sh [--duration 10s]
#
# Prints the latencies (wrk, one connection: an analyst's browser) and the ratios, and writes
# them to bench/UI.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    *) echo "usage: bench/ui.sh [--duration 10s]" >&2; exit 2 ;;
  esac
done

source bench/common.sh wrk:wrk redis-server:redis-server faketime:faketime --
LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
DAYS=400

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
cp -r experiments "$WORK/experiments"
first=$(date -u -d "$((DAYS + 20)) days ago" +%Y-%m-%dT00:00:00Z)
sed -i "s/^start = .*/start = $first/" "$WORK/experiments/"*.toml

# start [ENV…] -> PORT, PID: a gateway over the experiment copy, Redis on.
start() {
  PORT=$(free_port)
  env "$@" RECGW__SERVER__LISTEN="127.0.0.1:$PORT" RECGW__CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    RECGW__EXPERIMENTS__DIR="$WORK/experiments" RECGW__TRACKING__SECRET=bench-secret-of-at-least-32-bytes \
    RECGW__SERVER__ACCESS_LOG=false RUST_LOG=warn "$BIN" serve >>"$WORK/gateway.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 600); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.05; done
  curl -sf "127.0.0.1:$PORT/ready" >/dev/null || { echo "the gateway never got ready: $(tail -3 "$WORK/gateway.log")" >&2; exit 1; }
}

echo "writing $DAYS days of counts (a gateway on a clock moved a day at a time)" >&2
clock="$WORK/faketime"
echo "@$(date -u -d "$DAYS days ago" '+%Y-%m-%d 12:00:00')" >"$clock"
start LD_PRELOAD="$LIB" FAKETIME_TIMESTAMP_FILE="$clock" FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1
python3 - "http://127.0.0.1:$PORT" "$clock" "$DAYS" <<'PY'
import datetime, json, random, sys, time, urllib.request
base, clock, days = sys.argv[1], sys.argv[2], int(sys.argv[3])
random.seed(400)
today = datetime.datetime.now(datetime.timezone.utc).date()
for back in range(days - 1, -1, -1):
    with open(clock, "w") as f:
        f.write(f"@{today - datetime.timedelta(days=back)} 12:00:00\n")
    events = []
    for user in random.sample(range(1, 2001), 8):
        r = json.load(urllib.request.urlopen(f"{base}/recommendations/{user}?placement=home&limit=5"))
        ctr = 0.05 if r["arm"] == "control" else 0.06
        for item in r["items"]:
            events.append({"type": "impression", "tracking_token": r["tracking_token"], "item_id": item["item_id"]})
            if random.random() < ctr:
                events.append({"type": "click", "tracking_token": r["tracking_token"], "item_id": item["item_id"]})
    body = json.dumps({"events": events}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{base}/events", data=body, headers={"Content-Type": "application/json"})).read()
    time.sleep(0.05)  # users come in with their first event, counted on its day by the claim
PY
kill -INT "$PID"; wait "$PID" || true

start
days=$(curl -sf "127.0.0.1:$PORT/experiments/home-als-rank/results?by=day" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["days"]))')
page_bytes=$(curl -sf "127.0.0.1:$PORT/ui/experiments/home-als-rank" | wc -c)
echo "$days days in the results; the page is $page_bytes bytes" >&2

# latency PATH -> "p50 p99 req/s" of one connection for DURATION (after a warm-up)
latency() {
  wrk -t1 -c1 -d2s "http://127.0.0.1:$PORT$1" >/dev/null
  wrk -t1 -c1 -d"$DURATION" --latency "http://127.0.0.1:$PORT$1" | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(label):
    m = re.search(label + r"\s+([\d.]+)(us|ms|s)\b", text)
    v = float(m.group(1)); return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print("{:.2f} {:.2f} {:.1f}".format(ms("50%"), ms("99%"), rps))'
}

# rps PATH CONNECTIONS -> requests/s
rps() {
  wrk -t2 -c"$2" -d"$DURATION" "http://127.0.0.1:$PORT$1" | awk '/Requests\/sec/ {print $2}'
}

read -r json_p50 json_p99 _ < <(latency "/experiments/home-als-rank/results?by=day")
read -r page_p50 page_p99 _ < <(latency "/ui/experiments/home-als-rank")
read -r list_p50 list_p99 _ < <(latency "/ui/")
recs=/recommendations/42?placement=home
alone=$(rps "$recs" 16)
wrk -t1 -c1 -d"$DURATION" "http://127.0.0.1:$PORT/ui/experiments/home-als-rank" >"$WORK/page-load.txt" &
beside=$(rps "$recs" 16)
wait $!
pages_beside=$(awk '/Requests\/sec/ {print $2}' "$WORK/page-load.txt")

report=$(cat <<EOF
## $(date -u +%Y-%m-%d) on $(nproc) cores: \`home-als-rank\` with $days days

| what | p50 ms | p99 ms |
| --- | --- | --- |
| \`GET /experiments/home-als-rank/results?by=day\` (JSON, the baseline) | $json_p50 | $json_p99 |
| \`GET /ui/experiments/home-als-rank\` ($page_bytes bytes) | $page_p50 | $page_p99 |
| \`GET /ui/\` (three experiments) | $list_p50 | $list_p99 |

Page / JSON p50: $(python3 -c "print(f'{$page_p50/$json_p50:.2f}')") ×. Recommendations (\`$recs\`, 16 connections):
$alone req/s alone, $beside req/s while one connection loads the page without pause
($pages_beside pages/s): $(python3 -c "print(f'{$beside/$alone:.2f}')") ×.
EOF
)
echo "$report"
{ echo "# The results UI on 400 days (bench/ui.sh)"; echo; echo "$report"; } >bench/UI.md
