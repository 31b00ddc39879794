#!/usr/bin/env bash
# The project's test command: every crate's unit, conformance (embedded and the librdkafka mock
# cluster), integration and end-to-end tests, the API's contract (scripts/api-contract.sh:
# schemathesis against `conveyor dev`), then the live-broker tests on Apache Kafka
# (scripts/live.sh: a one-node and a three-node KRaft cluster and TLS/SASL listeners, started
# and stopped by scripts/kafka.sh; CONVEYOR_TEST_BROKERS=host:port runs the one-node part on
# your broker). CONVEYOR_SKIP_LIVE=1 skips the live tests for a quick local loop; CI never sets
# it. Extra arguments go to `cargo test` (e.g. --locked). scripts/python-tools.sh installs the
# Python packages tests use as peers (a venv under ~/.cache/conveyor) before anything runs.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
# the Python peers some tests verify against (standardwebhooks): installed first, path handed on
CONVEYOR_TEST_PYTHON=$(scripts/python-tools.sh)
export CONVEYOR_TEST_PYTHON
# the README's walk-through test runs the receiver example as a program: `--all-targets` builds
# examples only in test mode, so it is built as the walk-through builds it first
cargo build -p conveyor --example receiver "$@"
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"
scripts/api-contract.sh "$@"
if [ "${CONVEYOR_SKIP_LIVE:-}" = "1" ]; then
  echo "test.sh: CONVEYOR_SKIP_LIVE=1: the live-broker tests did NOT run" >&2
else
  scripts/live.sh "$@"
fi
echo "test.sh: all tests passed in $(( $(date +%s) - started )) s" >&2
