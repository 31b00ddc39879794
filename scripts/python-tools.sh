#!/usr/bin/env bash
# The Python packages conveyor's tests use as independent peers, installed from PyPI into a
# virtual environment in ${CONVEYOR_CACHE:-~/.cache/conveyor}/python-tools-<versions> (Debian's
# python3-venv is installed when missing, as root). Prints the environment's python on stdout.
#
#   scripts/python-tools.sh          # installs when missing; prints e.g. ~/.cache/conveyor/python-tools-swh1.1.0/bin/python
#
# Today: `standardwebhooks` (the Standard Webhooks reference library), which
# crates/conveyor/tests/signed_webhooks.rs uses to verify conveyor's webhook signatures.
# scripts/test.sh runs this first and passes the path to the tests as CONVEYOR_TEST_PYTHON.
set -euo pipefail
STANDARDWEBHOOKS=1.1.0
cache="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}"
venv="$cache/python-tools-swh$STANDARDWEBHOOKS"
if ! "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
    else
      echo "python-tools.sh: python3's venv module is missing: install Debian's python3-venv" >&2
      exit 1
    fi
  fi
  echo "python-tools.sh: installing standardwebhooks $STANDARDWEBHOOKS into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "standardwebhooks==$STANDARDWEBHOOKS" >&2
fi
echo "$venv/bin/python"
