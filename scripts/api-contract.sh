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
# every operation but the probes needs a token: schemathesis sends the admin one
[[api.tokens]]
name = "contract"
roles = ["admin"]
env = "CONVEYOR_CONTRACT_TOKEN"
[[topics]]
name = "emails"
partitions = 2
[[topics]]
name = "emails.dlq"
partitions = 2
TOML
token="cvt_contract-$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
CONVEYOR_CONTRACT_TOKEN="$token" target/debug/conveyor dev --config "$work/conveyor.toml" >"$work/dev.log" 2>&1 &
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
  --url "$base" --checks all --max-examples "$EXAMPLES" "${seed[@]}" --output-sanitize false \
  --header "Authorization: Bearer $token"
# and without the token (or with a wrong one) every operation but the probes and the document
# answers 401 unauthenticated, whatever it is sent
echo "api-contract.sh: every operation refuses a missing or wrong token" >&2
python3 - "$base" <<'PY'
import json, sys, urllib.request, urllib.error
base = sys.argv[1]
doc = json.load(urllib.request.urlopen(base + "/openapi.json"))
fill = {"{topic}": "emails", "{group}": "g", "{name}": "n", "{id}": "0193a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"}
checked = 0
for path, ops in doc["paths"].items():
    for method, op in ops.items():
        if op.get("security") == []:
            continue
        url = path
        for k, v in fill.items():
            url = url.replace(k, v)
        for auth in (None, "Bearer cvt_wrong", "Basic abc"):
            req = urllib.request.Request(base + url, method=method.upper(), data=b"{}" if method != "get" else None)
            req.add_header("Content-Type", "application/json")
            if auth:
                req.add_header("Authorization", auth)
            try:
                urllib.request.urlopen(req)
                status, body = 200, b""
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read()
            code = json.loads(body or b"{}").get("error", {}).get("code")
            if status != 401 or code != "unauthenticated":
                sys.exit(f"{method.upper()} {path} with {auth!r} answered {status} {code}, not 401 unauthenticated")
        checked += 1
if checked < 17:
    sys.exit(f"only {checked} operations checked")
print(f"api-contract.sh: {checked} operations refuse a missing or wrong token", file=sys.stderr)
PY
if ! kill -0 "$dev" 2>/dev/null; then
  cat "$work/dev.log" >&2
  echo "api-contract.sh: conveyor dev died during the run" >&2
  exit 1
fi
