#!/usr/bin/env bash
# Compile devnet/contracts/*.vy into the checked-in JSON artifacts ({"abi", "bytecode"}).
#
# vyper is a build-time tool only: it is installed into the project venv on
# demand and is not a runtime dependency. The EVM version is pinned to
# shanghai because that bytecode (PUSH0, no MCOPY/transient storage) runs on
# py-evm 0.12.1b1 (eth-tester's Prague VM), on anvil 1.7.1 and on every live
# chain chainflow targets.
set -euo pipefail

VYPER_VERSION="0.4.3"
EVM_VERSION="shanghai"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
VYPER="$VENV/bin/vyper"
CONTRACTS="$ROOT/devnet/contracts"

if [[ ! -x "$PY" ]]; then
  echo "error: no virtualenv python at $PY (set VENV=...)" >&2
  exit 1
fi

if ! "$VYPER" --version 2>/dev/null | grep -q "^${VYPER_VERSION}+"; then
  echo "installing vyper==${VYPER_VERSION} into $VENV (build-time only)"
  "$PY" -m pip install --quiet "vyper==${VYPER_VERSION}"
fi

shopt -s nullglob
sources=("$CONTRACTS"/*.vy)
if (( ${#sources[@]} == 0 )); then
  echo "error: no .vy sources in $CONTRACTS" >&2
  exit 1
fi

for src in "${sources[@]}"; do
  out="${src%.vy}.json"
  abi="$("$VYPER" -f abi --evm-version "$EVM_VERSION" "$src")"
  bytecode="$("$VYPER" -f bytecode --evm-version "$EVM_VERSION" "$src")"
  ABI="$abi" BYTECODE="$bytecode" OUT="$out" \
    COMPILER="vyper ${VYPER_VERSION}" EVM_VERSION="$EVM_VERSION" \
    "$PY" - <<'PYEOF'
import json
import os

artifact = {
    "abi": json.loads(os.environ["ABI"]),
    "bytecode": os.environ["BYTECODE"].strip(),
    "compiler": os.environ["COMPILER"],
    "evmVersion": os.environ["EVM_VERSION"],
}
if not artifact["bytecode"].startswith("0x"):
    raise SystemExit(f"unexpected bytecode output: {artifact['bytecode'][:40]!r}")
with open(os.environ["OUT"], "w", encoding="utf-8") as fh:
    json.dump(artifact, fh, indent=2)
    fh.write("\n")
PYEOF
  echo "wrote ${out#"$ROOT"/}"
done
