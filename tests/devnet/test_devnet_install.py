"""scripts/install-anvil.sh: pinned, committed lockfile, idempotent and fast when installed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from devnet import ANVIL_VERSION, anvil_binary

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-anvil.sh"
PACKAGE = "@foundry-rs/anvil-linux-amd64"


def test_package_json_pins_exact_version_and_lockfile_matches() -> None:
    manifest = json.loads((ROOT / "package.json").read_text())
    assert manifest["dependencies"] == {PACKAGE: ANVIL_VERSION}  # exact pin, no ^ or ~
    lock = json.loads((ROOT / "package-lock.json").read_text())
    entry = lock["packages"][f"node_modules/{PACKAGE}"]
    assert entry["version"] == ANVIL_VERSION
    assert entry["integrity"].startswith("sha512-")
    assert "node_modules/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.anvil
@pytest.mark.usefixtures("anvil_installed")
def test_install_script_is_idempotent_and_fast() -> None:
    lock_before = (ROOT / "package-lock.json").read_bytes()
    for _ in range(2):
        started = time.monotonic()
        result = subprocess.run(
            ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd="/", check=False
        )
        assert result.returncode == 0, result.stderr
        assert "already installed" in result.stdout
        assert time.monotonic() - started < 5
    assert (ROOT / "package-lock.json").read_bytes() == lock_before
    binary = anvil_binary()
    assert os.access(binary, os.X_OK)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    assert f"anvil Version: {ANVIL_VERSION}" in version
