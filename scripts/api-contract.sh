#!/usr/bin/env bash
# The API's contract: schemathesis (`--checks all`, bounded examples, a fixed seed) against a
# fresh `conveyor dev` on the embedded backend: every answer must be one the OpenAPI document
# (/openapi.json) describes, schema-valid requests accepted, schema-violating ones refused, no
# 5xx. Exceptions, each argued, are in scripts/schemathesis.toml. Fails on any failure.
#
#   scripts/api-contract.sh [CARGO ARGS...]          # e.g. --locked
#   SCHEMATHESIS_SEED=random scripts/api-contract.sh # explore beyond the fixed seed
#
# schemathesis (pinned below) is installed from PyPI into a virtual environment in
# ${CONVEYOR_CACHE:-~/.cache/conveyor}; Debian's python3-venv is installed when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-50}
cache="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}"
venv="$cache/schemathesis-$VERSION"
if [ ! -x "$venv/bin/schemathesis" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq python3-venv
    else
      echo "api-contract.sh: python3's venv module is missing: install Debian's python3-venv" >&2
      exit 1
    fi
  fi
  echo "api-contract.sh: installing schemathesis $VERSION into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$VERSION"
fi

cargo build -p conveyor "$@"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/conveyor.toml" <<TOML
data_dir = "$work/data"
[api]
listen = "127.0.0.1:$port"
# requests nobody answers (no worker runs here) time out fast: 504 after 100 ms
max_reply_timeout_ms = 100
[[topics]]
name = "emails"
partitions = 2
[[topics]]
name = "emails.dlq"
partitions = 2
TOML
target/debug/conveyor dev --config "$work/conveyor.toml" >"$work/dev.log" 2>&1 &
dev=$!
cleanup() { kill "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$dev" 2>/dev/null || { cat "$work/dev.log" >&2; echo "api-contract.sh: conveyor dev exited" >&2; exit 1; }
  sleep 0.1
done
seed=()
[ "${SCHEMATHESIS_SEED:-}" = "random" ] || seed=(--seed "${SCHEMATHESIS_SEED:-20261201}")
echo "api-contract.sh: schemathesis $VERSION against $base (--max-examples $EXAMPLES ${seed[*]})" >&2
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
  --url "$base" --checks all --max-examples "$EXAMPLES" "${seed[@]}" --output-sanitize false
if ! kill -0 "$dev" 2>/dev/null; then
  cat "$work/dev.log" >&2
  echo "api-contract.sh: conveyor dev died during the run" >&2
  exit 1
fi
