#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install chainflow with the given extras. Idempotent:
# pip is skipped when pyproject.toml has not changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-evm}"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "installing python3-venv from Debian packages"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
fi
[[ -x .venv/bin/python ]] || { echo "creating .venv"; python3 -m venv .venv; }
stamp=".venv/.installed-$extras"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "installing chainflow[$extras] into .venv (the first time takes a minute or two)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
