"""``chainflow devnet``: local chains from the command line.

    chainflow devnet up [--evm anvil|inprocess] [--btc] [--block-time S]
    chainflow devnet status | down
    chainflow devnet mine [--chain evm|btc] [N]
    chainflow devnet reorg --chain evm|btc --depth N
    chainflow devnet fund [--chain evm|btc] ADDRESS AMOUNT      (AMOUNT: 10eth, 5000wei, 0.5btc, 1000sat)

``up`` prints the RPC URLs and the funded dev keys (the well-known test mnemonic's, as
anvil prints them: never use them for anything real) and returns; the nodes run on in
a supervisor process (``devnet.daemon``) whose state file lets the other commands find
them.  The command attaches to the ``chainflow`` CLI through the ``chainflow.commands``
entry point (chainflow itself never imports devnet), and runs as ``python -m devnet``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import click

from devnet import daemon
from devnet.errors import DevnetError
from devnet.regtest import sats_to_coins

STATE_DIR_ENV = "CHAINFLOW_DEVNET_DIR"
_UNITS = {"evm": {"eth": 10**18, "gwei": 10**9, "wei": 1}, "btc": {"btc": 10**8, "sat": 1, "sats": 1}}
_UP_TIMEOUT = 120.0  # s: a cold litecoind with a fresh wallet takes a few


def default_dir() -> Path:
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chainflow" / "devnet"


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _state(directory: Path) -> dict[str, Any]:
    state = daemon.read_state(directory)
    if state is None:
        fail(f"no devnet is up (no live state in {directory}); start one with `chainflow devnet up`")
    return state


@click.group()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=default_dir,
              show_default=f"${STATE_DIR_ENV} or ~/.cache/chainflow/devnet", help="Where the devnet's state lives.")
@click.pass_context
def devnet(ctx: click.Context, directory: Path) -> None:
    """Local devnets: an EVM node (anvil or in-process) and a Bitcoin regtest node."""
    ctx.obj = directory


@devnet.command()
@click.option("--evm", type=click.Choice([*daemon.EVM_BACKENDS, "none"]), default="anvil", show_default=True,
              help="EVM backend: the pinned anvil binary, or the in-process py-evm one (no binary needed).")
@click.option("--btc", is_flag=True, help="Also a Bitcoin-family regtest node (bitcoind or litecoind).")
@click.option("--block-time", type=click.FloatRange(0), default=1.0, show_default=True, metavar="S",
              help="Mine a block every S seconds (0: EVM mines on each transaction, regtest only on request). "
                   "Confirmations(n) waits need blocks to keep coming.")
@click.pass_obj
def up(directory: Path, evm: str, btc: bool, block_time: float) -> None:
    """Start the devnet in the background and print its RPC URLs and dev keys."""
    if evm == "none" and not btc:
        raise click.UsageError("nothing to start: give --btc, or an --evm backend")
    if daemon.read_state(directory) is not None:
        fail(f"a devnet is already up (state in {directory}); `chainflow devnet status` shows it, "
             "`chainflow devnet down` stops it")
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / daemon.LOG_NAME
    argv = [sys.executable, "-m", "devnet.daemon", str(directory)]
    if evm != "none":
        argv += ["--evm", evm]
    if btc:
        argv.append("--btc")
    if block_time:
        argv += ["--block-time", repr(block_time)]
    click.echo(f"starting {'+'.join(p for p in (evm if evm != 'none' else '', 'regtest' if btc else '') if p)}…",
               err=True)
    # 0600 like the state file: the supervisor masks the RPC password, the nodes' own
    # messages it passes on are no business of other users either
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # a log an older version created keeps its mode otherwise
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=os.getcwd(), env={**os.environ})
    end = time.monotonic() + _UP_TIMEOUT
    while (state := daemon.read_state(directory)) is None:
        if proc.poll() is not None:
            fail(f"the devnet failed to start (exit {proc.returncode}): {_tail(log)}")
        if time.monotonic() > end:
            proc.terminate()
            fail(f"the devnet was not up after {_UP_TIMEOUT:.0f}s: {_tail(log)}")
        time.sleep(0.1)
    _print_state(state, directory)


@devnet.command()
@click.option("--json", "as_json", is_flag=True, help="The state as JSON (URLs, pids, dev keys).")
@click.pass_obj
def status(directory: Path, as_json: bool) -> None:
    """What is up: RPC URLs, heights, dev keys."""
    state = _state(directory)
    if as_json:
        click.echo(json.dumps({**state, **_heights(state)}, indent=1))
        return
    _print_state(state, directory)


@devnet.command()
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0), help="Seconds to wait.")
@click.pass_obj
def down(directory: Path, timeout: float) -> None:
    """Stop the devnet's nodes (their chains are thrown away)."""
    state = daemon.read_state(directory)
    if state is None:
        click.echo("no devnet is up", err=True)
        return
    pid = int(state["pid"])
    os.kill(pid, 15)
    end = time.monotonic() + timeout
    while daemon.alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if daemon.alive(pid):
        fail(f"devnet supervisor {pid} still running after {timeout:g}s")
    click.echo("devnet down")


@devnet.command()
@click.option("--chain", type=click.Choice(["evm", "btc"]), help="Which chain (default: the only one up).")
@click.argument("blocks", type=click.IntRange(1), default=1)
@click.pass_obj
def mine(directory: Path, chain: str | None, blocks: int) -> None:
    """Mine BLOCKS blocks now."""
    state = _state(directory)
    which = _chain(state, chain)
    if which == "evm":
        evm = daemon.evm_controls(state)
        evm.mine(blocks)
        click.echo(f"evm: mined {blocks}, head {evm.block_number()}")
    else:
        node = daemon.btc_controls(state)
        node.mine(blocks)
        click.echo(f"btc: mined {blocks}, head {node.height()}")


@devnet.command()
@click.option("--chain", type=click.Choice(["evm", "btc"]), help="Which chain (default: the only one up).")
@click.option("--depth", type=click.IntRange(1), required=True, help="Blocks to replace.")
@click.pass_obj
def reorg(directory: Path, chain: str | None, depth: int) -> None:
    """Replace the newest DEPTH blocks with new ones: their transactions go back to the
    mempool (and are mined again), which a chainflow tracker sees as a reorg."""
    state = _state(directory)
    which = _chain(state, chain)
    try:
        if which == "evm":
            evm = daemon.evm_controls(state)
            before = evm.block_number()
            evm.reorg(depth)
            click.echo(f"evm: replaced {depth} block(s) below head {before}; head {evm.block_number()}")
        else:
            node = daemon.btc_controls(state)
            result = node.reorg(depth)
            click.echo(f"btc: replaced {depth} block(s) above {result.fork_height}; head {node.height()}, "
                       f"{len(result.orphaned_txs)} transaction(s) back in the mempool")
    except (DevnetError, ValueError) as exc:
        fail(str(exc))


@devnet.command()
@click.option("--chain", type=click.Choice(["evm", "btc"]), help="Which chain (default: the only one up).")
@click.argument("address")
@click.argument("amount")
@click.pass_obj
def fund(directory: Path, chain: str | None, address: str, amount: str) -> None:
    """Give ADDRESS AMOUNT (with its unit: 10eth, 2.5gwei, 5000wei; 0.5btc, 1000sat)."""
    state = _state(directory)
    which = _chain(state, chain)
    base = parse_amount(amount, which)
    try:
        if which == "evm":
            evm = daemon.evm_controls(state)
            balance = int(evm.rpc("eth_getBalance", address, "latest"), 16)
            evm.set_balance(address, balance + base)
            click.echo(f"evm: {address} now holds {balance + base} wei")
        else:
            outpoint = daemon.btc_controls(state).fund(address, base)
            click.echo(f"btc: paid {base} sat ({sats_to_coins(base)}) to {address} in {outpoint}, mined")
    except (DevnetError, ValueError) as exc:
        fail(str(exc))


def parse_amount(text: str, chain: str) -> int:
    """``10eth`` -> wei, exactly (Decimal, never a float); a unit is required: a bare
    number would be read in the wrong unit by someone."""
    units = _UNITS[chain]
    lowered = text.strip().lower()
    unit = next((u for u in sorted(units, key=len, reverse=True) if lowered.endswith(u)), None)
    if unit is None:
        fail(f"amount {text!r} needs a unit: one of {', '.join(units)} (e.g. 10{next(iter(units))})")
    try:
        value = Decimal(lowered[: -len(unit)]) * units[unit]
    except InvalidOperation:
        fail(f"amount {text!r} is not a number of {unit}")
    if value != value.to_integral_value() or value <= 0:
        fail(f"amount {text!r} must be a positive whole number of {min(units, key=units.__getitem__)}")
    return int(value)


def _chain(state: dict[str, Any], chain: str | None) -> str:
    up_ = [c for c in ("evm", "btc") if c in state]
    if chain is None:
        if len(up_) != 1:
            raise click.UsageError(f"several chains are up ({', '.join(up_)}): say which with --chain")
        return up_[0]
    if chain not in state:
        fail(f"no {chain} chain in this devnet (up: {', '.join(up_)})")
    return chain


def _heights(state: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        if "evm" in state:
            out["evm_height"] = daemon.evm_controls(state).block_number()
        if "btc" in state:
            out["btc_height"] = daemon.btc_controls(state).height()
    except (OSError, DevnetError) as exc:
        out["error"] = str(exc)
    return out


def _print_state(state: dict[str, Any], directory: Path) -> None:
    heights = _heights(state)
    if "evm" in state:
        evm = state["evm"]
        click.echo(f"EVM ({evm['backend']}, chain id {evm['chain_id']}): {evm['rpc_url']}  "
                   f"height {heights.get('evm_height', '?')}")
        click.echo("  dev accounts (test mnemonic, public keys: never use them on a real chain):")
        for i, account in enumerate(daemon.evm_controls(state).accounts()):
            click.echo(f"  ({i}) {account.address}  {account.private_key}")
    if "btc" in state:
        btc = state["btc"]
        click.echo(f"Bitcoin regtest ({btc['flavor']}, network {btc['network']}): {btc['rpc_url']}  "
                   f"height {heights.get('btc_height', '?')}, node wallet {btc['wallet']!r} funded")
    every = f"a block every {state['block_time']:g}s" if state["block_time"] else "blocks on demand"
    click.echo(f"{every}; state in {directory}; `chainflow devnet down` stops it")


def _tail(log: Path, limit: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-limit:].strip() or "<empty log>"
    except FileNotFoundError:
        return "<no log>"


def main() -> None:
    devnet(prog_name="python -m devnet")
