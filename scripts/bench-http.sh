#!/usr/bin/env bash
# HTTP single-job enqueue under wrk, conveyor against its ceiling, in one run:
#   1. `conveyor serve` (embedded backend, durable writes, job lookup on: as in production) and
#   2. a bare axum server that parses the same body and stores nothing
#      (crates/conveyor-server/examples/bare_axum.rs),
# each loaded by the same wrk settings (scripts/bench/enqueue.lua), and the ratio printed.
#
#   scripts/bench-http.sh [--threads 2] [--connections 50] [--seconds 10]
#
# Needs wrk (apt-get install wrk). Sends only to 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 connections=50 seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "bench-http: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "bench-http: wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -p conveyor -p conveyor-server --example bare_axum >&2
work=$(mktemp -d -t conveyor-bench-http.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "bench-http: $1 did not come up" >&2
  exit 1
}
load() { wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s scripts/bench/enqueue.lua "$1"; }
rate() { sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p'; }

conveyor_port=$(port)
cat >"$work/conveyor.toml" <<TOML
data_dir = "$work/data"
[api]
listen = "127.0.0.1:$conveyor_port"
[[topics]]
name = "bench"
partitions = 8
TOML
target/release/conveyor serve -c "$work/conveyor.toml" >"$work/conveyor.log" 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$conveyor_port/healthz"
echo "== conveyor serve (embedded, fsync) =="
load "http://127.0.0.1:$conveyor_port/v1/topics/bench/jobs" | tee "$work/conveyor.wrk"

bare_port=$(port)
target/release/examples/bare_axum "127.0.0.1:$bare_port" >"$work/bare.log" 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$bare_port/"
echo "== bare axum server (parses the body, stores nothing) =="
load "http://127.0.0.1:$bare_port/v1/topics/bench/jobs" | tee "$work/bare.wrk"

c=$(rate <"$work/conveyor.wrk") b=$(rate <"$work/bare.wrk")
python3 -c "print(f'RESULT conveyor_req_s={$c:.0f} bare_req_s={$b:.0f} ratio={$c/$b:.2f}')"
