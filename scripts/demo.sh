#!/usr/bin/env bash
# Install chainflow and run the demo mint workflow on the embedded defaults
# (a SQLite file and an in-process EVM): no services needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh evm
exec .venv/bin/python -m examples.mint
