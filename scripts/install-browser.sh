#!/usr/bin/env bash
# Install Debian's headless browser for the dashboard's browser tests (tests/ui):
# chromium and the chromedriver that matches it, from the distribution's packages.
# Idempotent and fast when both are there: nothing touches the network.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  echo "chromium already installed ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found; install chromium and chromium-driver with your package manager" >&2
  exit 1
fi
sudo_=""
[[ $(id -u) -eq 0 ]] || sudo_="sudo"
echo "installing chromium and chromium-driver from Debian packages"
$sudo_ apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends chromium chromium-driver \
  fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
