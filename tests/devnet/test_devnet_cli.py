"""``chainflow devnet``: up (anvil + a regtest node) in a background supervisor, status,
mine, fund, reorg, down -- checked on the nodes themselves over RPC -- and the command
reaching ``chainflow`` through its entry point."""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from devnet import daemon
from devnet.cli import devnet, parse_amount

from tests.conftest import require_anvil, require_regtest

ROOT = Path(__file__).resolve().parents[2]
DEAD = "0x000000000000000000000000000000000000dEaD"


def run(directory: Path, *args: str, ok: bool = True) -> Any:
    result = CliRunner().invoke(devnet, ["--dir", str(directory), *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


@pytest.fixture
def up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    require_anvil()
    require_regtest()
    # the supervisor is `python -m devnet.daemon`: it must import this checkout
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    directory = tmp_path / "devnet"
    result = run(directory, "up", "--evm", "anvil", "--btc", "--block-time", "0")
    state = daemon.read_state(directory)
    assert state is not None
    try:
        yield directory, state, result.stdout
    finally:
        run(directory, "down")


def test_up_status_mine_fund_reorg_down(up: Any) -> None:
    directory, state, printed = up
    evm, btc = daemon.evm_controls(state), daemon.btc_controls(state)
    assert state["evm"]["rpc_url"] in printed and state["btc"]["rpc_url"] in printed
    first = evm.accounts()[0]
    assert first.address in printed and first.private_key in printed  # like anvil: dev keys printed
    # the state file is 0600 for the regtest RPC password: no file beside it shows it to others
    password = urlsplit(state["btc"]["rpc_url"]).password
    assert password and (directory / daemon.LOG_NAME).read_text()  # the supervisor did log
    shared = [p.name for p in directory.iterdir() if p.stat().st_mode & 0o077 and password in p.read_text()]
    assert shared == [] and stat.S_IMODE((directory / daemon.LOG_NAME).stat().st_mode) == 0o600
    assert int(evm.rpc("eth_getBalance", first.address, "latest"), 16) == 10_000 * 10**18

    shown = json.loads(run(directory, "status", "--json").stdout)
    assert shown["evm_height"] == evm.block_number() and shown["btc_height"] == btc.height()
    assert run(directory, "mine", ok=False).exit_code == 2  # two chains up: which one?

    run(directory, "mine", "--chain", "evm", "4")
    assert evm.block_number() == 4
    height = btc.height()
    run(directory, "mine", "--chain", "btc", "3")
    assert btc.height() == height + 3

    run(directory, "fund", "--chain", "evm", DEAD, "1.5eth")
    assert int(evm.rpc("eth_getBalance", DEAD, "latest"), 16) == 15 * 10**17
    address = btc._wallet_rpc("getnewaddress")
    out = run(directory, "fund", "--chain", "btc", address, "0.00012345btc").stdout
    txid, vout = out.split(" in ")[1].split(",")[0].split(":")
    paid = btc.rpc("getrawtransaction", txid, True)
    assert paid["blockhash"] and str(paid["vout"][int(vout)]["value"]) == "0.00012345"

    # a reorg: the blocks at the top heights are replaced (new hashes), the chain goes on
    evm_top = evm.block_number()
    evm_before = evm.rpc("eth_getBlockByNumber", hex(evm_top), False)["hash"]
    run(directory, "reorg", "--chain", "evm", "--depth", "2")
    assert evm.rpc("eth_getBlockByNumber", hex(evm_top), False)["hash"] != evm_before
    btc_top = btc.height()
    btc_before = btc.rpc("getblockhash", btc_top)
    run(directory, "reorg", "--chain", "btc", "--depth", "2")
    assert btc.height() == btc_top + 1 and btc.rpc("getblockhash", btc_top) != btc_before
    assert btc.rpc("getrawtransaction", txid, True)["txid"] == txid  # the funding tx back in the mempool

    again = run(directory, "up", ok=False)
    assert again.exit_code == 1 and "already up" in again.stderr
    pids = [state["pid"], state["evm"]["pid"], state["btc"]["pid"]]
    run(directory, "down")
    assert not any(daemon.alive(p) for p in pids)
    assert daemon.read_state(directory) is None
    gone = run(directory, "status", ok=False)
    assert gone.exit_code == 1 and "no devnet is up" in gone.stderr


@pytest.mark.parametrize(("text", "chain", "base"), [
    ("10eth", "evm", 10 * 10**18), ("1.5ETH", "evm", 15 * 10**17), ("2gwei", "evm", 2 * 10**9),
    ("7wei", "evm", 7), ("0.5btc", "btc", 50_000_000), ("1000sat", "btc", 1000),
])
def test_amounts_are_exact(text: str, chain: str, base: int) -> None:
    assert parse_amount(text, chain) == base


@pytest.mark.parametrize(("text", "chain", "needle"), [
    ("10", "evm", "needs a unit"), ("1e-30eth", "evm", "whole number of wei"), ("xeth", "evm", "not a number"),
    ("1eth", "btc", "needs a unit"), ("-1sat", "btc", "positive"),
])
def test_bad_amounts_name_the_problem(text: str, chain: str, needle: str) -> None:
    import click

    with pytest.raises(click.ClickException, match=needle):
        parse_amount(text, chain)


def test_devnet_reaches_chainflow_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    import chainflow.cli as cfcli

    declared = importlib.metadata.EntryPoint("devnet", "devnet.cli:devnet", cfcli.PLUGIN_GROUP)
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_xyz:cmd", cfcli.PLUGIN_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [declared, broken] if group == cfcli.PLUGIN_GROUP else [])
    monkeypatch.setattr(cfcli.cli, "commands", dict(cfcli.cli.commands))
    cfcli.load_plugins()
    assert "devnet" in cfcli.cli.commands and "broken" not in cfcli.cli.commands
    result = CliRunner().invoke(cfcli.cli, ["devnet", "--help"])
    assert result.exit_code == 0 and "reorg" in result.stdout and "fund" in result.stdout
    assert 'devnet = "devnet.cli:devnet"' in (ROOT / "pyproject.toml").read_text()
