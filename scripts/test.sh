#!/usr/bin/env bash
# The project's test command: every crate's unit, conformance (embedded and the librdkafka mock
# cluster), integration and end-to-end tests, then the live-broker tests (scripts/live-kafka.sh:
# tansu on 127.0.0.1, or CONVEYOR_TEST_BROKERS=host:port). CONVEYOR_SKIP_LIVE=1 skips the latter
# for a quick local loop; CI never sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
if [ "${CONVEYOR_SKIP_LIVE:-}" = "1" ]; then
  echo "test.sh: CONVEYOR_SKIP_LIVE=1: the live-broker tests did NOT run" >&2
else
  scripts/live-kafka.sh "$@"
fi
