#!/usr/bin/env bash
# Install everything the tests need (idempotently) and run the whole suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh test
bash scripts/install-anvil.sh
bash scripts/install-regtest.sh
bash scripts/install-browser.sh
bash scripts/ensure-postgres.sh
exec .venv/bin/python -m pytest "$@"
