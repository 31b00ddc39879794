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
step() { echo "=== test.sh: $* ($(date -u +%H:%M:%S), $(( $(date +%s) - started )) s)" >&2; }
# cargo-nextest runs the tests (.config/nextest.toml: each test its own process, binaries side by
# side, a hung test killed after 5 minutes and named); from crates.io when missing
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest 0.9.151 (crates.io; compiled once, a few minutes on 2 cores)"
  cargo install --locked cargo-nextest@0.9.151
fi
# the Python peers some tests verify against (standardwebhooks): installed first, path handed on
CONVEYOR_TEST_PYTHON=$(scripts/python-tools.sh)
export CONVEYOR_TEST_PYTHON
# the README's walk-through test runs the receiver example as a program: `--all-targets` builds
# examples only in test mode, so it is built as the walk-through builds it first
step "building"
cargo build -p conveyor --example receiver "$@"
step "unit, conformance, integration and end-to-end tests (cargo nextest)"
cargo nextest run --workspace --all-targets --no-tests fail "$@"
step "doc tests (the README's Rust block among them)"
# a doc test that hangs (the README's program waits for its job) fails here instead of at CI's limit
timeout 900 cargo test --workspace --doc "$@"
step "API contract (schemathesis against conveyor dev)"
scripts/api-contract.sh "$@"
if [ "${CONVEYOR_SKIP_LIVE:-}" = "1" ]; then
  echo "test.sh: CONVEYOR_SKIP_LIVE=1: the live-broker tests did NOT run" >&2
  if [ -n "${CONVEYOR_TEST_BESIDE_LIVE:-}" ]; then
    step "$CONVEYOR_TEST_BESIDE_LIVE (CONVEYOR_TEST_BESIDE_LIVE, with no live tests to go beside)"
    bash -c "$CONVEYOR_TEST_BESIDE_LIVE"
  fi
else
  step "live-broker tests (scripts/live.sh)"
  scripts/live.sh "$@"
fi
echo "test.sh: all tests passed in $(( $(date +%s) - started )) s" >&2
