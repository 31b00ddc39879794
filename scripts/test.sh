#!/usr/bin/env bash
# The project's test command: every crate's unit, conformance, integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
