#!/usr/bin/env bash
# The live-broker tests, on Apache Kafka started by scripts/kafka.sh (jars from Maven Central,
# cached in ${CONVEYOR_CACHE:-~/.cache/conveyor}), in three runs:
#   1. one node: the conformance suite with the classic group protocol and with KIP-848,
#      transactions, the Java client on conveyor's topics, three members churning under load,
#      `topics apply`, two `conveyor dev` processes failing over, the chaos run (two worker
#      processes killed in turn while members join and leave), and cron schedules on two
#      processes (each tick once; downtime with `missed = skip` and `once`), request/reply
#      (1,000 concurrent requests, timeouts, late replies counted, a shared reply topic), a
#      schedule changed just before its tick, forged idempotency answers refused, `serve --role`
#      api, workers and scheduler as three processes, /metrics after a known workload, job lookup
#      (each job's state after retries, dead letters, delays, cancellations; read again);
#   2. three nodes (replication 3, min.insync.replicas 2): a partition leader killed with
#      kill -9, then two of three brokers down;
#   3. one node with SASL_SSL (SCRAM-SHA-512) and mutual-TLS listeners: the handshakes.
#
#   scripts/live.sh [CARGO TEST ARGS...]                             # e.g. --locked
#   CONVEYOR_TEST_BROKERS=host:port scripts/live.sh                  # run 1 on your broker
#
# With CONVEYOR_TEST_BROKERS set, run 1 uses that broker (Kafka, Redpanda, any Kafka-protocol
# broker) instead of starting one; runs 2 and 3 always start their own (they kill brokers and
# need listeners with known certificates). Runs 2 and 3 go beside run 1. Tests run under
# cargo-nextest (.config/nextest.toml: each test its own process, a hung test killed and named).
set -euo pipefail
cd "$(dirname "$0")/.."

# One package set and feature set for every run below, so the test binaries are built once (by
# the first run) and the others find them fresh.
LIVE=(-p conveyor-kafka -p conveyor -p conveyor-examples
  --features conveyor-kafka/live,conveyor/live,conveyor-examples/live)
# The one-node tests: whole binaries, and the live tests of binaries that also hold others.
SINGLE_NODE='package(conveyor-kafka) & (binary(=conformance_live) | binary(=transactions_live) | binary(=latest_live)
  | binary(=java_interop_live) | binary(=group_churn_live) | binary(=poison_live) | binary(=time_live)
  | binary(=request_live) | binary(=schedule_change_live))
| package(conveyor) & (binary(=kafka_topics_live) | binary(=kafka_failover) | binary(=signals)
  | binary(=reserved_topics_live) | binary(=serve_roles_live) | binary(=readme_production_live)
  | binary(=schedules_live)
  | binary(=chaos) & test(chaos_kafka_live) | binary(=delayed) & test(live_kafka)
  | binary(=metrics) & test(live_kafka) | binary(=job_lookup) & test(live_kafka)
  | binary(=outbox) & test(kafka_live))
| package(conveyor-examples) & ((binary(=waitlist) | binary(=agents) | binary(=cv_eval)) & test(live_kafka)
  | binary(=orders) & test(kafka_live))'

if [ "${1:-}" = "--single-node-tests" ]; then
  shift
  echo "live.sh: broker ${CONVEYOR_TEST_BROKERS} (Apache Kafka ${CONVEYOR_TEST_KAFKA_VERSION:-version not known: your own broker})" >&2
  # PostgreSQL (CONVEYOR_TEST_POSTGRES, else 127.0.0.1:5432, else a throwaway server) for the
  # outbox relay killed while transactions commit and the orders example with workers killed
  exec cargo nextest run --profile live "${LIVE[@]}" "$@" --no-tests fail -E "$SINGLE_NODE"
fi

step() { echo "=== live.sh: $* ($(date -u +%H:%M:%S), $(( $(date +%s) - started )) s)" >&2; }
started=$(date +%s)

step "building the live test binaries"
cargo test "${LIVE[@]}" "$@" --no-run

# Runs 2 and 3 start their own brokers on free ports, so they run beside run 1 (most of every
# run is waiting: for brokers, rebalances, timeouts, killed processes); their output is kept in
# a file and shown when they end.
logs=$(mktemp -d "${TMPDIR:-/tmp}/conveyor-live.XXXXXX")
# whatever ends this script (a failure, Ctrl-C, a SIGTERM from CI) ends what runs beside it too:
# the brokers of runs 2 and 3 (scripts/kafka.sh stops its own on SIGTERM) and the guard
others=
beside=
kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill -TERM "$1" 2>/dev/null || true
}
stop_beside() {
  local pid
  for pid in $others $beside; do kill_tree "$pid"; done
  rm -rf "$logs"
}
trap stop_beside EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
(
  step "2/3 three nodes: leader kill, below min.insync.replicas (beside run 1; output in $logs/cluster.log)"
  CONVEYOR_TEST_CHILD_LOG="${CONVEYOR_TEST_CHILD_LOG:-warn,conveyor_runtime=info,conveyor_server=info}" \
    scripts/kafka.sh --nodes 3 -- cargo nextest run --profile live "${LIVE[@]}" "$@" --no-tests fail \
    -E 'package(conveyor) & binary(=kafka_cluster_live)' >"$logs/cluster.log" 2>&1
  step "3/3 SASL_SSL and mutual TLS (beside run 1; output in $logs/security.log)"
  scripts/kafka.sh --security -- cargo nextest run --profile live "${LIVE[@]}" "$@" --no-tests fail \
    -E 'package(conveyor) & binary(=kafka_security_live)' >"$logs/security.log" 2>&1
) &
others=$!
# CONVEYOR_TEST_BESIDE_LIVE="COMMAND": run beside the live tests too, its failure theirs (.ci/run puts
# the slowdown guard here: it counts instructions, which the tests' load does not move, and its
# release build uses the processors the waiting tests leave idle)
if [ -n "${CONVEYOR_TEST_BESIDE_LIVE:-}" ]; then
  step "beside the live tests: $CONVEYOR_TEST_BESIDE_LIVE (output in $logs/beside.log)"
  bash -c "$CONVEYOR_TEST_BESIDE_LIVE" >"$logs/beside.log" 2>&1 &
  beside=$!
fi

step "1/3 one node: conformance (classic and KIP-848), transactions, Java client, churn, topics apply, failover, chaos, time, request/reply, metrics, job lookup, examples"
single=0
if [ -n "${CONVEYOR_TEST_BROKERS:-}" ]; then
  scripts/kafka.sh --install # the Java client's jars
  CONVEYOR_TEST_KAFKA_LIBS="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/kafka-$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)/libs" \
    "$0" --single-node-tests "$@" || single=$?
else
  scripts/kafka.sh -- "$0" --single-node-tests "$@" || single=$?
fi
step "1/3 ended (exit $single); waiting for runs 2 and 3"
rest=0
wait "$others" || rest=$?
others= # reaped: its pid may be reused, so the exit trap must not signal it
if [ -n "$beside" ]; then
  step "waiting for: $CONVEYOR_TEST_BESIDE_LIVE"
  wait "$beside" || rest=$?
  beside=
fi
for log in "$logs/cluster.log" "$logs/security.log" "$logs/beside.log"; do
  [ -f "$log" ] || continue
  echo "=== live.sh: output of $(basename "$log" .log)" >&2
  cat "$log" >&2
done
rm -rf "$logs"
if [ "$single" -ne 0 ] || [ "$rest" -ne 0 ]; then
  step "FAILED: run 1 exit $single, runs 2 and 3 (and CONVEYOR_TEST_BESIDE_LIVE) exit $rest (their output above)"
  exit 1
fi
step "done"
