#!/usr/bin/env bash
# The live-broker tests: the conformance suite and the two-process failover test against a broker
# process speaking the Kafka protocol.
#
#   CONVEYOR_TEST_BROKERS=host:port scripts/live-kafka.sh   # any broker you run (Kafka, Redpanda)
#   scripts/live-kafka.sh                                   # tansu with SQLite storage, on 127.0.0.1
#
# Without CONVEYOR_TEST_BROKERS it starts tansu on a free 127.0.0.1 port in a fresh temporary
# folder (no .env there), and stops it on exit. tansu is installed once into
# ${CONVEYOR_CACHE:-~/.cache/conveyor}/tansu (a ~20-40 minute build on 2 cores) and reused.
# `scripts/live-kafka.sh --install` only installs tansu. Other arguments go to `cargo test`
# (e.g. --locked).
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
CACHE="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}"
TANSU="$CACHE/tansu/bin/tansu"

install_tansu() {
  if [ ! -x "$TANSU" ]; then
    echo "live-kafka: installing tansu $TANSU_VERSION into $CACHE/tansu (once; ~20-40 min on 2 cores)" >&2
    build=$(mktemp -d)
    (cd "$build" && cargo install tansu --version "$TANSU_VERSION" --locked \
      --features dynostore,libsql,postgres --root "$CACHE/tansu")
    rm -rf "$build"
  fi
}

if [ "${1:-}" = "--install" ]; then
  install_tansu
  exit 0
fi

if [ -z "${CONVEYOR_TEST_BROKERS:-}" ]; then
  install_tansu
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  (cd "$work" && exec "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://tansu.db" >"$work/tansu.log" 2>&1) &
  tansu_pid=$!
  cleanup() {
    kill "$tansu_pid" 2>/dev/null || true
    wait "$tansu_pid" 2>/dev/null || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    if ! kill -0 "$tansu_pid" 2>/dev/null; then
      echo "live-kafka: tansu exited at start:" >&2; cat "$work/tansu.log" >&2; exit 1
    fi
    sleep 0.1
  done
  export CONVEYOR_TEST_BROKERS="127.0.0.1:$port"
  export CONVEYOR_TEST_BROKER_KIND=tansu
  echo "live-kafka: tansu $TANSU_VERSION (sqlite) on $CONVEYOR_TEST_BROKERS" >&2
else
  echo "live-kafka: using the broker at $CONVEYOR_TEST_BROKERS" >&2
fi

cargo test -p conveyor-kafka --features live --test conformance_live "$@"
cargo test -p conveyor --features live --test kafka_failover "$@" -- --nocapture
