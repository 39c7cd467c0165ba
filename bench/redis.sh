# Shared by bench/events.sh and bench/users-memory.sh (sourced after bench/common.sh, whose WORK,
# PIDS, free_port and cleanup trap it uses): Redis on loopback (one node, or a Redis Cluster of
# masters), a gateway on the demo's folders, and the section of a results file a script owns.

# On exit, the background processes are stopped and waited for (2 s at most) before the work
# folder goes, so no Redis still writes into it.
cleanup_waiting() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 40); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 1 ] || break
    sleep 0.05
  done
  cleanup
}
trap cleanup_waiting EXIT

# duration_seconds 5s|2m|1500ms -> seconds
duration_seconds() {
  awk -v d="$1" 'BEGIN { n = d + 0; if (d ~ /ms$/) n /= 1000; else if (d ~ /m$/) n *= 60; else if (d ~ /h$/) n *= 3600; print n }'
}

# low_port -> a free loopback port in [20000, 55535], not handed out before by this script: a
# cluster node's bus port must stay below 65536, and node ports are kept clear of the
# ephemeral range other clients draw from.
LOW_PORTS_TAKEN=" "
low_port() {
  local port
  for _ in $(seq 100); do
    port=$(python3 -c 'import random, socket
p = random.randint(20000, 55535)
s = socket.socket(); s.bind(("127.0.0.1", p)); print(p)' 2>/dev/null) || continue
    case "$LOW_PORTS_TAKEN" in *" $port "*) continue ;; esac
    LOW_PORTS_TAKEN="$LOW_PORTS_TAKEN$port "
    echo "$port"
    return
  done
  echo "no free port in [20000, 55535]" >&2
  return 1
}

# wait_redis PORT: until it answers PING (10 s at most)
wait_redis() {
  for _ in $(seq 200); do
    [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ] && return
    sleep 0.05
  done
  echo "redis on $1 never answered" >&2
  exit 1
}

# start_redis_node -> REDIS_URL, REDIS_PORTS (one)
start_redis_node() {
  local port
  port=$(low_port)
  mkdir -p "$WORK/redis-$port"
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$WORK/redis-$port" \
    --logfile "$WORK/redis-$port/redis.log" &
  PIDS+=($!)
  wait_redis "$port"
  REDIS_URL="redis://127.0.0.1:$port"
  REDIS_PORTS=("$port")
}

# start_redis_cluster N -> REDIS_URL (the nodes' URLs, comma-separated), REDIS_PORTS: N masters,
# no replicas, slots split by redis-cli, waited on until every node says cluster_state:ok.
start_redis_cluster() {
  local port bus nodes=() urls=()
  REDIS_PORTS=()
  for _ in $(seq "$1"); do
    port=$(low_port)
    bus=$(low_port)
    mkdir -p "$WORK/redis-$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-port "$bus" \
      --cluster-config-file "$WORK/redis-$port/nodes.conf" --cluster-node-timeout 5000 \
      --save "" --appendonly no --dir "$WORK/redis-$port" --logfile "$WORK/redis-$port/redis.log" &
    PIDS+=($!)
    REDIS_PORTS+=("$port")
    nodes+=("127.0.0.1:$port")
    urls+=("redis://127.0.0.1:$port")
  done
  for port in "${REDIS_PORTS[@]}"; do wait_redis "$port"; done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.log" 2>&1 \
    || { cat "$WORK/cluster-create.log" >&2; exit 1; }
  local ok
  for _ in $(seq 400); do
    ok=0
    for port in "${REDIS_PORTS[@]}"; do
      redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
    done
    [ "$ok" -eq "${#REDIS_PORTS[@]}" ] && break
    sleep 0.05
  done
  [ "$ok" -eq "${#REDIS_PORTS[@]}" ] || { echo "cluster never reached cluster_state:ok" >&2; exit 1; }
  REDIS_URL=$(IFS=,; echo "${urls[*]}")
}

# flush_redis PORT...: every node emptied (a cluster has no replicas, so each master's own)
flush_redis() {
  local port
  for port in "$@"; do redis-cli -h 127.0.0.1 -p "$port" flushall >/dev/null; done
}

# start_gateway BIN REDIS_URL -> PORT, PID: the demo's folders, Redis on, local tier on
start_gateway() {
  PORT=$(free_port)
  RECGW__SERVER__LISTEN="127.0.0.1:$PORT" RECGW__CACHE__REDIS_URL="$2" \
    RECGW__TRACKING__SECRET=bench-secret-of-at-least-32-bytes RUST_LOG=warn "$1" serve \
    2>>"$WORK/gateway.log" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 600); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.05; done
  curl -sf "127.0.0.1:$PORT/ready" >/dev/null || { echo "$1 never got ready" >&2; tail "$WORK/gateway.log" >&2; exit 1; }
  # A cluster client connects in the background: serve a user until Redis answers the gateway.
  for _ in $(seq 200); do
    curl -sf "127.0.0.1:$PORT/recommendations/0?placement=home" >/dev/null || true
    curl -sf "127.0.0.1:$PORT/metrics" 2>/dev/null | grep -q '^redis_up 1' && return
    sleep 0.05
  done
  echo "$1: redis_up never became 1" >&2
  exit 1
}

stop_gateway() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

# commit_note -> "commit abc1234" (with a note when src/ or Cargo files differ from it)
commit_note() {
  local note="commit $(git rev-parse --short HEAD)"
  [ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || note="$note plus uncommitted changes to src/"
  echo "$note"
}

machine_note() { echo "$(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), Redis $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/')"; }

# write_section FILE NAME CONTENT_FILE: CONTENT_FILE becomes FILE's section NAME (between
# `<!-- NAME -->` and `<!-- /NAME -->`), replacing the old one or added at the end.
write_section() {
  python3 - "$1" "$2" "$3" <<'EOF'
import os, re, sys
path, name, content = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().rstrip("\n")
text = open(path).read() if os.path.exists(path) else "# Per-user results: event throughput and Redis memory\n"
block = f"<!-- {name} -->\n{content}\n<!-- /{name} -->"
pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
open(path, "w").write(text.rstrip("\n") + "\n")
EOF
}
