#!/usr/bin/env bash
# Install the pinned anvil devnet binary into ./node_modules via npm.
#
# Idempotent and fast when already installed: if the binary exists, is
# executable and reports the pinned version, nothing touches the network.
# `npm ci` (not `npm install`) is used so the committed package-lock.json is
# the single source of truth and never gets rewritten.
set -euo pipefail

ANVIL_VERSION="1.7.1"
PACKAGE="@foundry-rs/anvil-linux-amd64"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/node_modules/$PACKAGE/bin/anvil"

installed_version() {
  [[ -x "$BIN" ]] || return 1
  "$BIN" --version 2>/dev/null | sed -n 's/^anvil Version: \([^ ]*\).*/\1/p' | head -n1
}

if [[ "$(installed_version || true)" == "$ANVIL_VERSION" ]]; then
  echo "anvil $ANVIL_VERSION already installed at ${BIN#"$ROOT"/}"
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *)
    echo "error: $PACKAGE only supports Linux x86_64 (this is $(uname -s)-$(uname -m))" >&2
    exit 1
    ;;
esac

if ! command -v npm >/dev/null 2>&1; then
  # Debian 12's nodejs is 18 while the package declares node >= 20: npm only warns
  # (EBADENGINE) and the package is a prebuilt binary that never runs under node, so
  # Debian's own nodejs + npm install it fine.
  echo "npm not found: installing Debian's nodejs and npm"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get install -y -qq nodejs npm >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq nodejs npm >/dev/null; }
fi

cd "$ROOT"
if [[ ! -f package.json || ! -f package-lock.json ]]; then
  echo "error: package.json/package-lock.json missing in $ROOT" >&2
  exit 1
fi

echo "installing $PACKAGE@$ANVIL_VERSION via npm ci"
npm ci --no-audit --no-fund --loglevel=error

# npm normally restores the exec bit from the tarball, but some filesystems/umasks drop it.
chmod +x "$BIN"

got="$(installed_version || true)"
if [[ "$got" != "$ANVIL_VERSION" ]]; then
  echo "error: expected anvil $ANVIL_VERSION at $BIN, got '${got:-nothing}'" >&2
  exit 1
fi
echo "anvil $ANVIL_VERSION installed at ${BIN#"$ROOT"/}"
