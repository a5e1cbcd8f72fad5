"""The process behind ``chainflow devnet up``: it owns the nodes and outlives the command.

The devnet classes tie each node to the process that started it (a parent-death signal,
a finalizer), which is right for tests and wrong for a command that must return while
the nodes keep running.  So ``up`` starts this supervisor in a session of its own; it
starts the nodes with those same classes, writes what clients need to the state file,
and on SIGTERM (``down``) stops them and removes the file.  If it dies, its nodes die
with it: nothing is left running that no state file points to.

With ``--block-time`` a Bitcoin regtest node is mined on that interval here (bitcoind
mines only when asked); the EVM backends have interval mining of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from devnet.accounts import DEFAULT_ACCOUNT_COUNT, DEFAULT_DERIVATION_PATH, DEFAULT_MNEMONIC
from devnet.base import AttachedEVM, Lifecycle
from devnet.regtest import RegtestNode

STATE_NAME = "state.json"
LOG_NAME = "devnet.log"
EVM_BACKENDS = ("anvil", "inprocess")


def state_path(directory: Path) -> Path:
    return directory / STATE_NAME


def read_state(directory: Path) -> dict[str, Any] | None:
    """The running devnet's state, or None when none is up (or its supervisor died)."""
    path = state_path(directory)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not alive(int(state["pid"])):
        path.unlink(missing_ok=True)  # a supervisor SIGKILLed took its nodes along
        return None
    return state


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child of ours is reaped here, not taken for alive)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def evm_controls(state: dict[str, Any]) -> AttachedEVM:
    evm = state["evm"]
    return AttachedEVM(evm["rpc_url"], chain_id=evm["chain_id"], accounts=evm["accounts"],
                       mnemonic=evm["mnemonic"], derivation_path=evm["derivation_path"])


def btc_controls(state: dict[str, Any]) -> RegtestNode:
    return RegtestNode.attach(state["btc"]["rpc_url"], wallet=state["btc"]["wallet"])


def _start_evm(backend: str, block_time: float | None) -> tuple[Lifecycle, dict[str, Any]]:
    node: Any
    if backend == "anvil":
        from devnet.anvil import Anvil

        node = Anvil(block_time=block_time).start()
    else:
        from devnet.inprocess import InProcessEVM

        node = InProcessEVM(block_time=block_time).start()
    return node, {"backend": backend, "rpc_url": node.rpc_url, "chain_id": node.chain_id, "pid": node_pid(node),
                  "accounts": DEFAULT_ACCOUNT_COUNT, "mnemonic": DEFAULT_MNEMONIC,
                  "derivation_path": DEFAULT_DERIVATION_PATH}


def node_pid(node: Any) -> int:
    """The node's own process (the in-process EVM lives in the supervisor's)."""
    return int(getattr(node, "pid", None) or os.getpid())


def serve(directory: Path, evm: str | None, btc: bool, block_time: float | None) -> None:
    nodes: list[Lifecycle] = []
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    state: dict[str, Any] = {"pid": os.getpid(), "block_time": block_time}
    try:
        if evm is not None:
            node, state["evm"] = _start_evm(evm, block_time)
            nodes.append(node)
        regtest: RegtestNode | None = None
        if btc:
            regtest = RegtestNode().start()
            nodes.append(regtest)
            state["btc"] = {"rpc_url": regtest.rpc_url, "wallet": regtest.wallet, "network": regtest.network,
                            "flavor": regtest.flavor, "pid": regtest.pid, "datadir": str(regtest.datadir)}
        tmp = state_path(directory).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.chmod(tmp, 0o600)  # the regtest RPC password
        tmp.replace(state_path(directory))
        logged = {k: v for k, v in state.items() if k != "pid"}
        if regtest is not None:  # the log is no place for the password the state file's mode protects
            logged["btc"] = {**state["btc"], "rpc_url": regtest.masked_rpc_url}
        print(f"devnet up: {json.dumps(logged)}", flush=True)
        while not stop.wait(block_time if regtest is not None and block_time else 3600):
            if regtest is not None and block_time:
                regtest.mine(1)
    finally:
        state_path(directory).unlink(missing_ok=True)
        for node in reversed(nodes):
            node.stop()
        print("devnet down", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devnet.daemon", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--evm", choices=EVM_BACKENDS)
    parser.add_argument("--btc", action="store_true")
    parser.add_argument("--block-time", type=float)
    args = parser.parse_args(argv)
    serve(args.directory, args.evm, args.btc, args.block_time)


if __name__ == "__main__":
    main(sys.argv[1:])
