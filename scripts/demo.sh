#!/usr/bin/env bash
# Install chainflow and run the demo mint workflow on the embedded defaults
# (a SQLite file and an in-process EVM): no services needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh devnet  # the demo runs on the in-process EVM (devnet extra)
exec .venv/bin/python -m examples.mint
