"""Start/stop, accounts and binary discovery for both devnets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from devnet import Anvil, AnvilNotInstalled, DevnetError, InProcessEVM, anvil_binary
from devnet.anvil import ANVIL_BINARY_ENV
from devnet.base import Devnet

pytestmark = pytest.mark.timeout(60)

# anvil's first default account for the public "test ... junk" mnemonic.
FIRST_DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def _reachable(url: str) -> bool:
    request = urllib.request.Request(
        url, data=b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}', method="POST"
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=2):
            return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def test_start_serves_loopback_json_rpc_and_stop_frees_it(make_net: Any) -> None:
    net = make_net(chain_id=4242)
    with net:
        url = net.rpc_url
        assert url.startswith("http://127.0.0.1:")
        w3 = Web3(Web3.HTTPProvider(url))
        assert w3.eth.chain_id == 4242
        assert w3.eth.block_number == 0
        accounts = net.accounts()
        assert accounts[0].address == FIRST_DEV_ADDRESS
        assert len(accounts) == 10
        assert w3.eth.get_balance(accounts[9].address) == 10_000 * 10**18
        assert Web3.to_checksum_address(w3.eth.accounts[0]) == FIRST_DEV_ADDRESS
        assert "0x" not in repr(accounts[0]).replace(accounts[0].address, "")  # keys stay out of reprs
    assert not _reachable(url)
    net.stop()  # idempotent


def test_account_options_are_honoured(make_net: Any) -> None:
    with make_net(accounts=3, balance_eth=5) as net:
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        accounts = net.accounts()
        assert len(accounts) == 3
        assert all(w3.eth.get_balance(a.address) == 5 * 10**18 for a in accounts)
        signer = w3.eth.account.from_key(accounts[2].private_key)
        assert signer.address == accounts[2].address


def test_set_balance(devnet: Devnet) -> None:
    w3 = Web3(Web3.HTTPProvider(devnet.rpc_url))
    target = Web3.to_checksum_address("0x000000000000000000000000000000000000beef")
    devnet.set_balance(target, 123)
    assert w3.eth.get_balance(target) == 123


@pytest.mark.anvil
@pytest.mark.usefixtures("anvil_installed")
def test_anvil_process_is_killed_on_stop() -> None:
    anvil = Anvil().start()
    pid = anvil.pid
    assert pid is not None and anvil.is_running()
    anvil.stop()
    assert not anvil.is_running()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.anvil
@pytest.mark.usefixtures("anvil_installed")
def test_anvil_dies_with_the_interpreter_even_without_stop() -> None:
    script = "from devnet import Anvil; print(Anvil().start().pid)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=root, check=True
    )
    pid = int(out.stdout.strip())
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "zombie" in status.read_text()


def test_anvil_binary_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ANVIL_BINARY_ENV, str(tmp_path / "nope" / "anvil"))
    with pytest.raises(AnvilNotInstalled, match="install-anvil.sh"):
        anvil_binary()
    with pytest.raises(AnvilNotInstalled):
        Anvil().start()


def test_anvil_rejects_conflicting_mining_options() -> None:
    with pytest.raises(ValueError):
        Anvil(block_time=1, no_mining=True)


@pytest.mark.anvil
@pytest.mark.usefixtures("anvil_installed")
def test_anvil_startup_failure_reports_log() -> None:
    with pytest.raises(DevnetError, match="anvil"):
        Anvil(extra_args=["--definitely-not-a-flag"], startup_timeout=5).start()


def test_inprocess_interval_mining() -> None:
    with InProcessEVM(automine=False, block_time=0.05) as net:
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        deadline = time.monotonic() + 5
        while w3.eth.block_number < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w3.eth.block_number >= 3
        net.set_interval_mining(0)


@pytest.mark.anvil
@pytest.mark.usefixtures("anvil_installed")
def test_anvil_interval_mining_toggle() -> None:
    with Anvil(block_time=0.2) as net:
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        time.sleep(0.7)
        assert w3.eth.block_number >= 2
        net.set_interval_mining(0)
        net.set_automine(False)
        frozen = w3.eth.block_number
        time.sleep(0.5)
        assert w3.eth.block_number == frozen


@pytest.mark.anvil
@pytest.mark.usefixtures("anvil_installed")
def test_env_override_points_at_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    real = anvil_binary()
    monkeypatch.setenv(ANVIL_BINARY_ENV, os.fspath(real))
    assert anvil_binary() == real
