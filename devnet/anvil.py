"""Run the pinned anvil binary as a throw-away devnet on a private loopback port."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from devnet.accounts import (
    DEFAULT_ACCOUNT_COUNT,
    DEFAULT_BALANCE_ETH,
    DEFAULT_DERIVATION_PATH,
    DEFAULT_MNEMONIC,
)
from devnet.base import RpcControls
from devnet.errors import AnvilNotInstalled, DevnetError, RpcError
from devnet.ports import LOOPBACK, free_loopback_port
from devnet.process import terminate, with_parent_death_signal
from devnet.rpc import JsonRpcClient, to_quantity

#: Version pinned in the root package.json; bump both together.
ANVIL_VERSION = "1.7.1"
#: Overrides the binary location (e.g. a CI cache); PATH is deliberately not searched
#: because an unpinned anvil behaves differently across releases.
ANVIL_BINARY_ENV = "CHAINFLOW_ANVIL_BINARY"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_NPM_BINARY = _PROJECT_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
_START_ATTEMPTS = 3


def anvil_binary() -> Path:
    """Locate the pinned anvil binary or explain how to install it."""
    override = os.environ.get(ANVIL_BINARY_ENV)
    candidate = Path(override) if override else _NPM_BINARY
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    where = f"${ANVIL_BINARY_ENV}={override}" if override else str(candidate)
    raise AnvilNotInstalled(
        f"anvil {ANVIL_VERSION} not found or not executable at {where}. "
        f"Install it with: {_PROJECT_ROOT / 'scripts' / 'install-anvil.sh'}"
    )


class Anvil(RpcControls):
    """An anvil process bound to 127.0.0.1 that dies with its owner.

    Usable as a context manager; `stop()` is idempotent and also runs at
    interpreter exit, so a crashed test never leaks a node.
    """

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        block_time: float | None = None,
        no_mining: bool = False,
        base_fee: int | None = None,
        gas_limit: int | None = None,
        accounts: int = DEFAULT_ACCOUNT_COUNT,
        mnemonic: str = DEFAULT_MNEMONIC,
        derivation_path: str = DEFAULT_DERIVATION_PATH,
        balance_eth: int = DEFAULT_BALANCE_ETH,
        hardfork: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
        binary: Path | None = None,
    ) -> None:
        if block_time is not None and no_mining:
            raise ValueError("block_time and no_mining are mutually exclusive (anvil rejects both)")
        self._configure(chain_id=chain_id, block_time=block_time, base_fee=base_fee, gas_limit=gas_limit,
                        accounts=accounts, mnemonic=mnemonic, derivation_path=derivation_path,
                        balance_eth=balance_eth)
        self.no_mining = no_mining
        self.hardfork = hardfork
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None
        self.port: int | None = None
        self.log_path: Path | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise RuntimeError("anvil is not running")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, port: int) -> list[str]:
        """The exact argv used to launch anvil (handy when reproducing by hand)."""
        binary = self._binary or anvil_binary()
        args = [
            str(binary),
            "--host", LOOPBACK,
            "--port", str(port),
            "--chain-id", str(self.chain_id),
            "--accounts", str(self.account_count),
            "--mnemonic", self.mnemonic,
            "--derivation-path", self.derivation_path,
            "--balance", str(self.balance_eth),
        ]  # fmt: skip
        if self.block_time is not None:
            args += ["--block-time", _format_seconds(self.block_time)]
        if self.no_mining:
            args.append("--no-mining")
        if self.base_fee is not None:
            args += ["--base-fee", str(self.base_fee)]
        if self.gas_limit is not None:
            args += ["--gas-limit", str(self.gas_limit)]
        if self.hardfork is not None:
            args += ["--hardfork", self.hardfork]
        return args + list(self.extra_args)

    def start(self, port: int | None = None) -> Self:
        """Launch and block until anvil answers JSON-RPC; retried on port races.
        ``port``: that one, not a free one (a node replaced behind a URL its clients
        keep), tried once."""
        if self.is_running():
            return self
        binary = self._binary or anvil_binary()  # fail fast with the install hint
        self._binary = binary
        if port is not None:
            self._launch(port)
            return self
        last_error: Exception | None = None
        for _ in range(_START_ATTEMPTS):
            try:
                self._launch(free_loopback_port())
                return self
            except DevnetError as exc:  # most likely lost the port race; try a fresh port
                last_error = exc
                self.stop()
        raise DevnetError(f"anvil failed to start after {_START_ATTEMPTS} attempts: {last_error}")

    def _launch(self, port: int) -> None:
        fd, log_name = tempfile.mkstemp(prefix="anvil-", suffix=".log")
        self.log_path = Path(log_name)
        env = {k: v for k, v in os.environ.items() if k != "ANVIL_IP_ADDR"}
        argv = with_parent_death_signal(self.command(port))
        with os.fdopen(fd, "wb") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self._finalizer = weakref.finalize(self, _terminate, self._proc, self.log_path)
        self.port = port
        self._client = JsonRpcClient(self.rpc_url, timeout=10.0)
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None and self._client is not None
        probe = JsonRpcClient(self.rpc_url, timeout=1.0)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DevnetError(f"anvil exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                chain_id = int(probe.call("eth_chainId"), 16)
            except (OSError, DevnetError):
                time.sleep(0.05)
                continue
            if chain_id != self.chain_id:  # someone else owns this port
                raise DevnetError(f"port {self.port} answered with chain id {chain_id}")
            return
        raise DevnetError(f"anvil not ready after {self.startup_timeout}s: {self._log_tail()}")

    def _log_tail(self, limit: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "<no log>"
        return self.log_path.read_text(errors="replace")[-limit:]

    def stop(self) -> None:
        """Kill anvil (idempotent) and remove its log."""
        if self._finalizer is not None:
            self._finalizer()  # runs _terminate at most once
        self._finalizer = None
        self._proc = None
        self._client = None
        self.port = None

    # -- anvil-specific controls ------------------------------------------

    def set_interval_mining(self, seconds: int) -> None:
        """Mine every `seconds` (anvil only accepts whole seconds here); 0 disables it."""
        if seconds < 0 or int(seconds) != seconds:
            raise ValueError("anvil interval mining takes a non-negative whole number of seconds")
        self.rpc("evm_setIntervalMining", int(seconds))

    def set_next_base_fee(self, wei: int) -> None:
        """Force the base fee of the next mined block (anvil_setNextBlockBaseFeePerGas)."""
        self.rpc("anvil_setNextBlockBaseFeePerGas", to_quantity(wei))

    def revert(self, snapshot_id: str) -> bool:
        try:
            return super().revert(snapshot_id)
        except RpcError:
            return False


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _terminate(proc: subprocess.Popen[bytes], log_path: Path | None) -> None:
    # Module-level (not a method) so the finalizer holds no reference to the Anvil object.
    terminate(proc)
    if log_path is not None:
        log_path.unlink(missing_ok=True)
