# Shared by bench/run.sh and bench/soak.sh (sourced): installs the commands given as
# `command:package` pairs when missing, builds the release binary and the given examples, and
# gives a work folder whose background processes (PIDS) stop when the script exits.
#
#   source bench/common.sh wrk:wrk redis-server:redis-server -- baseline

need=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  command -v "${1%%:*}" >/dev/null || need+=("${1#*:}")
  shift
done
[ $# -gt 0 ] && shift
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
examples=()
for example in "$@"; do examples+=(--example "$example"); done
cargo build --release --locked --quiet --bin recgw "${examples[@]}"
BIN="$CARGO_TARGET_DIR/release/recgw"
EXAMPLES="$CARGO_TARGET_DIR/release/examples"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
