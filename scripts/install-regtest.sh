#!/usr/bin/env bash
# Make sure a Bitcoin-family regtest node binary is available for devnet/regtest.py.
#
# Idempotent and fast: when the binary devnet would pick is already present
# ($CHAINFLOW_BITCOIND, else `bitcoind` on PATH, else `litecoind`), nothing is installed.
# Otherwise Debian's `litecoind` (0.21.2.1, a Bitcoin Core 0.21 fork with the same RPC,
# script and segwit rules) is installed with apt-get: Bitcoin Core itself is not in the
# Debian archive. `apt-get update` runs only when the install fails for lack of lists.
set -euo pipefail

PACKAGE="litecoind"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if [[ -n "${CHAINFLOW_BITCOIND:-}" ]]; then
  # An explicit choice is never silently replaced by litecoind.
  if [[ -f "$CHAINFLOW_BITCOIND" && -x "$CHAINFLOW_BITCOIND" ]]; then
    echo "regtest node already installed: \$CHAINFLOW_BITCOIND=$CHAINFLOW_BITCOIND"
    exit 0
  fi
  echo "error: CHAINFLOW_BITCOIND=$CHAINFLOW_BITCOIND is not an executable file" >&2
  exit 1
fi

present() { command -v bitcoind || command -v litecoind; }

if binary="$(present)"; then
  echo "regtest node already installed: $binary"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no bitcoind/litecoind found and apt-get is unavailable;" \
       "install Bitcoin Core and set CHAINFLOW_BITCOIND=/path/to/bitcoind" >&2
  exit 1
fi

install() {
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null
}

echo "installing Debian's $PACKAGE with apt-get"
if ! install; then
  echo "apt-get install failed; refreshing the package lists (apt-get update) and retrying"
  as_root apt-get update -qq
  install
fi

binary="$(present)" || { echo "error: $PACKAGE installed but litecoind is not on PATH" >&2; exit 1; }
echo "regtest node installed: $binary ($("$binary" -version | head -n1))"
