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
# need listeners with known certificates).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--single-node-tests" ]; then
  shift
  echo "live.sh: broker ${CONVEYOR_TEST_BROKERS} (Apache Kafka ${CONVEYOR_TEST_KAFKA_VERSION:-version not known: your own broker})" >&2
  cargo test -p conveyor-kafka --features live "$@" \
    --test conformance_live --test transactions_live --test latest_live --test java_interop_live --test group_churn_live --test poison_live --test time_live --test request_live --test schedule_change_live \
    -- --nocapture
  cargo test -p conveyor --features live "$@" --test kafka_topics_live --test kafka_failover --test signals --test reserved_topics_live --test serve_roles_live --test readme_production_live -- --nocapture
  cargo test -p conveyor --features live "$@" --test chaos -- chaos_kafka_live --nocapture
  cargo test -p conveyor --features live "$@" --test delayed -- live_kafka --nocapture
  cargo test -p conveyor --features live "$@" --test schedules_live -- --nocapture
  cargo test -p conveyor --features live "$@" --test metrics -- live_kafka --nocapture
  cargo test -p conveyor --features live "$@" --test job_lookup -- live_kafka --nocapture
  cargo test -p conveyor-examples --features live "$@" --test waitlist --test agents --test cv_eval -- live_kafka --nocapture
  # PostgreSQL (CONVEYOR_TEST_POSTGRES, else 127.0.0.1:5432, else a throwaway server): the outbox
  # relay process killed while transactions commit; the orders example with worker processes killed
  cargo test -p conveyor --features live "$@" --test outbox -- kafka_live --nocapture
  cargo test -p conveyor-examples --features live "$@" --test orders -- kafka_live --nocapture
  exit 0
fi

step() { echo "=== live.sh: $* ($(date -u +%H:%M:%S))" >&2; }

step "1/3 one node: conformance (classic and KIP-848), transactions, Java client, churn, topics apply, failover"
if [ -n "${CONVEYOR_TEST_BROKERS:-}" ]; then
  scripts/kafka.sh --install # the Java client's jars
  CONVEYOR_TEST_KAFKA_LIBS="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/kafka-$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)/libs" \
    "$0" --single-node-tests "$@"
else
  scripts/kafka.sh -- "$0" --single-node-tests "$@"
fi

step "2/3 three nodes: leader kill, below min.insync.replicas"
CONVEYOR_TEST_CHILD_LOG="${CONVEYOR_TEST_CHILD_LOG:-warn,conveyor_runtime=info,conveyor_server=info}" \
  scripts/kafka.sh --nodes 3 -- cargo test -p conveyor --features live "$@" --test kafka_cluster_live -- --nocapture

step "3/3 SASL_SSL and mutual TLS"
scripts/kafka.sh --security -- cargo test -p conveyor --features live "$@" --test kafka_security_live -- --nocapture
step "done"
