"""A throw-away Bitcoin-family regtest node (bitcoind, or Debian's litecoind) as a child process.

Bitcoin Core is not packaged by Debian, so the tests run on Debian's
`litecoind` 0.21 (scripts/install-regtest.sh), a Bitcoin Core 0.21 fork with
the same RPC, script and segwit rules; a real bitcoind works with the same
code (``CHAINFLOW_BITCOIND=/path/to/bitcoind``). Only the start-up flags
differ between the two, and `node.network` names the chain for the adapter.

Blocks are mined with ``generatetodescriptor``/``generateblock`` so mining
never depends on a node wallet. The node wallet exists only to pay
`fund()`/`wallet_send()`: it is given mature coins once, at start.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Self

from devnet.base import Lifecycle
from devnet.errors import DevnetError, RegtestNotInstalled, RpcError
from devnet.ports import LOOPBACK, free_loopback_port
from devnet.process import terminate, with_parent_death_signal
from devnet.reorg import ReorgResult
from devnet.rpc import JsonRpcClient

#: A path to the node binary; wins over PATH (`bitcoind`, then `litecoind`).
BITCOIND_ENV = "CHAINFLOW_BITCOIND"
#: Blocks before a coinbase output may be spent (consensus, both flavours).
COINBASE_MATURITY = 100
_SATS_PER_COIN_EXP = 8  # 1 coin = 10**8 base units on both chains
_RPC_IN_WARMUP = -28  # "Loading block index...", "Rewinding blocks...": not ready yet
_RPC_WALLET_NOT_FOUND = -18
_START_ATTEMPTS = 3
_TXID = re.compile(r"[0-9a-fA-F]{64}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
# Litecoin's MWEB soft fork activates on regtest at height 432; once active, blocks need an
# MWEB extension that only a node wallet can build. Pushing its start time to the end of time
# keeps long test chains minable without one.
_NO_MWEB = "-vbparams=mweb:9223372036854775807:9223372036854775807:2147483647:2147483647"


@dataclass(frozen=True, slots=True)
class Flavor:
    """What differs between the node binaries this module can drive."""

    name: str  # "bitcoin" | "litecoin"
    network: str  # the Bitcoin adapter's name for this chain
    args: tuple[str, ...]  # start-up flags only this flavour needs (or accepts)


FLAVORS: dict[str, Flavor] = {
    # Core >= 28 replaces by fee by default and no longer knows -mempoolreplacement.
    "bitcoin": Flavor("bitcoin", "regtest", ()),
    # litecoind 0.21 relays replacements only when asked to.
    "litecoin": Flavor("litecoin", "litecoin-regtest", ("-mempoolreplacement=1", _NO_MWEB)),
}


@dataclass(frozen=True, slots=True)
class NodeBinary:
    path: Path
    flavor: Flavor


def node_binary() -> NodeBinary | None:
    """The node the devnet would run: ``$CHAINFLOW_BITCOIND``, else `bitcoind`, else `litecoind`
    on PATH; None when there is none.

    A set ``$CHAINFLOW_BITCOIND`` that names no executable raises instead of
    falling back: whoever set it meant that binary and no other.
    """
    override = os.environ.get(BITCOIND_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RegtestNotInstalled(f"${BITCOIND_ENV}={override} is not an executable file")
    else:
        found = shutil.which("bitcoind") or shutil.which("litecoind")
        if found is None:
            return None
        path = Path(found)
    return NodeBinary(path, _flavor_of(path.resolve(), path.stat().st_mtime_ns))


def require_node_binary() -> NodeBinary:
    binary = node_binary()
    if binary is None:
        script = Path(__file__).resolve().parent.parent / "scripts" / "install-regtest.sh"
        raise RegtestNotInstalled(
            f"no regtest node: set ${BITCOIND_ENV}=/path/to/bitcoind, put bitcoind on PATH, "
            f"or install Debian's litecoind with {script}"
        )
    return binary


@lru_cache(maxsize=8)
def _flavor_of(path: Path, mtime_ns: int) -> Flavor:
    # Asked of the binary itself: a renamed or wrapped executable (Debian's litecoind is a
    # shell wrapper) still says what it is. mtime_ns only keys the cache.
    try:
        out = subprocess.run([str(path), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise RegtestNotInstalled(f"{path} -version failed: {exc}") from exc
    first_line = (out.stdout.strip().splitlines() or [""])[0]
    if "Litecoin Core" in first_line:
        return FLAVORS["litecoin"]
    if "Bitcoin Core" in first_line:
        return FLAVORS["bitcoin"]
    raise RegtestNotInstalled(
        f"{path} is neither Bitcoin Core nor Litecoin Core: `-version` said {first_line or out.stderr[:200]!r}"
    )


def sats_to_coins(sats: int) -> Decimal:
    """Exact coin amount for a satoshi count (what the node's amount fields take)."""
    return Decimal(sats).scaleb(-_SATS_PER_COIN_EXP)


class RegtestNode(Lifecycle):
    """A regtest node bound to 127.0.0.1, its wallet funded, that dies with its owner.

    Usable as a context manager; `stop()` is idempotent and also runs at
    interpreter exit. A temporary datadir is deleted at stop; a given one is kept
    (and reused: the wallet is loaded, not re-created or re-funded).
    """

    def __init__(
        self,
        *,
        datadir: Path | str | None = None,
        binary: NodeBinary | None = None,
        wallet: str = "chainflow",
        wallet_coinbases: int = 10,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if isinstance(wallet_coinbases, bool) or not isinstance(wallet_coinbases, int) or wallet_coinbases < 1:
            raise ValueError(f"wallet_coinbases must be an int >= 1, got {wallet_coinbases!r}")
        if not wallet or "/" in wallet:
            raise ValueError(f"wallet must be a non-empty name without '/', got {wallet!r}")
        self._binary = binary
        self._given_datadir = Path(datadir) if datadir is not None else None
        self.wallet = wallet
        self.wallet_coinbases = wallet_coinbases
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.datadir: Path | None = None
        self.port: int | None = None
        self._user = "chainflow"
        self._password = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None
        self._client: JsonRpcClient | None = None
        self._wallet_client: JsonRpcClient | None = None
        # Every mined block pays a coinbase script of its own (see `_next_coinbase`).
        self._coinbase_tags = itertools.count(secrets.randbits(32))

    # -- identity --------------------------------------------------------

    @property
    def binary(self) -> NodeBinary:
        if self._binary is None:
            self._binary = require_node_binary()
        return self._binary

    @property
    def flavor(self) -> str:
        """"bitcoin" or "litecoin"."""
        return self.binary.flavor.name

    @property
    def network(self) -> str:
        """The Bitcoin adapter's network name: "regtest" (bitcoind) or "litecoin-regtest"."""
        return self.binary.flavor.network

    @property
    def rpc_url(self) -> str:
        """http://user:password@127.0.0.1:PORT (the node wallet is reachable at /wallet/<name>)."""
        if self.port is None:
            raise RuntimeError("regtest node is not running")
        return f"http://{self._user}:{self._password}@{LOOPBACK}:{self.port}"

    @property
    def masked_rpc_url(self) -> str:
        """``rpc_url`` as a log may hold it: the password masked, as chainflow masks a
        database URL's (``storage.connector.shown``)."""
        return self.rpc_url.replace(f":{self._password}@", ":***@", 1)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        # The RPC password stays out of reprs and assertion output.
        where = f"port={self.port}" if self.port is not None else "stopped"
        return f"RegtestNode({self.flavor if self._binary else '?'}, {where})"

    # -- lifecycle -------------------------------------------------------

    def command(self, datadir: Path, rpc_port: int, p2p_port: int) -> list[str]:
        """The exact argv used to launch the node (handy when reproducing by hand)."""
        return [
            str(self.binary.path),
            "-regtest", "-server", "-txindex=1", "-fallbackfee=0.0002",
            f"-datadir={datadir}",
            f"-rpcport={rpc_port}", f"-port={p2p_port}", f"-rpcbind={LOOPBACK}", f"-rpcallowip={LOOPBACK}",
            f"-rpcuser={self._user}", f"-rpcpassword={self._password}",
            "-listen=0", "-daemon=0", "-dnsseed=0", "-printtoconsole=0",
            "-walletrbf=1",  # wallet_send() replaceable, so bumpfee works on both flavours
            "-keypool=1",  # the default 1000 pre-generated keys cost litecoind 2 s per new wallet
            *self.binary.flavor.args,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Self:
        """Launch, wait until RPC answers, make sure the wallet exists and holds mature coins."""
        if self.is_running():
            return self
        binary = self.binary  # fail fast with the install hint
        last_error: Exception | None = None
        for _ in range(_START_ATTEMPTS):
            try:
                self._launch()
                break
            except DevnetError as exc:  # most likely lost a port race; try fresh ports
                last_error = exc
                self.stop()
        else:
            raise DevnetError(
                f"{binary.path} ({self.flavor}) failed to start after {_START_ATTEMPTS} attempts: {last_error}"
            )
        try:
            self._prepare_wallet()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        temporary = self._given_datadir is None
        datadir = Path(tempfile.mkdtemp(prefix="regtest-")) if temporary else self._given_datadir
        assert datadir is not None
        datadir.mkdir(parents=True, exist_ok=True)
        self.datadir = datadir
        self.port = free_loopback_port()
        argv = with_parent_death_signal(self.command(datadir, self.port, free_loopback_port()))
        with open(self._console_log, "wb") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._finalizer = weakref.finalize(self, _cleanup, self._proc, datadir if temporary else None)
        self._connect()
        self._wait_ready()

    def _connect(self) -> None:
        self._client = JsonRpcClient(self.rpc_url, timeout=60.0, exact_numbers=True)
        self._wallet_client = JsonRpcClient(
            f"{self.rpc_url}/wallet/{urllib.parse.quote(self.wallet, safe='')}", timeout=60.0, exact_numbers=True
        )

    @classmethod
    def attach(cls, rpc_url: str, *, wallet: str = "chainflow", binary: NodeBinary | None = None) -> RegtestNode:
        """Control a running node another process owns (``chainflow devnet``'s): RPC,
        mining, funding and reorgs work as on a node started here; ``stop()`` only
        forgets it, the node keeps running."""
        parts = urllib.parse.urlsplit(rpc_url)
        if parts.username is None or parts.password is None or parts.port is None:
            raise ValueError("rpc_url must look like http://user:password@127.0.0.1:PORT")
        node = cls(wallet=wallet, binary=binary)
        node._user, node._password, node.port = parts.username, parts.password, parts.port
        node._connect()
        return node

    @property
    def _console_log(self) -> Path:
        assert self.datadir is not None
        return self.datadir / "chainflow-node.log"

    def _wait_ready(self) -> None:
        assert self._proc is not None
        probe = JsonRpcClient(self.rpc_url, timeout=2.0)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DevnetError(f"node exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                chain = probe.call("getblockchaininfo")["chain"]
            except RpcError as exc:
                if exc.code != _RPC_IN_WARMUP:
                    raise DevnetError(f"node answered {exc}: {self.log_tail()}") from exc
            except (OSError, DevnetError):  # not listening yet
                pass
            else:
                if chain != "regtest":  # someone else owns this port
                    raise DevnetError(f"port {self.port} answered with chain {chain!r}")
                return
            time.sleep(0.05)
        raise DevnetError(f"node not ready after {self.startup_timeout}s: {self.log_tail()}")

    def _prepare_wallet(self) -> None:
        if self.wallet not in self.rpc("listwallets"):
            try:
                self.rpc("loadwallet", self.wallet)
            except RpcError as exc:
                if exc.code != _RPC_WALLET_NOT_FOUND:
                    raise
                self.rpc("createwallet", self.wallet)
        if self._wallet_rpc("getbalance") == 0:
            address = self._wallet_rpc("getnewaddress")
            self.rpc("generatetoaddress", COINBASE_MATURITY + self.wallet_coinbases, address)

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the node's console output and debug.log (why it failed to start)."""
        if self.datadir is None:
            return "<no log>"
        parts = []
        for path in (self._console_log, self.datadir / "regtest" / "debug.log"):
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts) or "<no log>"

    def stop(self) -> None:
        """Stop the node (RPC `stop`, killed after `stop_timeout`); idempotent.

        The node's shutdown waits for idle keep-alive RPC connections to time out
        (``-rpcservertimeout``, 30 s): this helper's own calls close theirs, and
        other clients (an adapter's session) should be closed before `stop()`,
        or the node is killed after `stop_timeout`.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None and self.port is not None:
            try:
                JsonRpcClient(self.rpc_url, timeout=5.0).call("stop")
            except (OSError, DevnetError):
                pass  # crashed or wedged: the kill below still ends it
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                # Typically held up by someone's idle keep-alive connection; SIGTERM would wait
                # on it just the same.
                proc.kill()
                proc.wait(timeout=5)
        if self._finalizer is not None:
            self._finalizer()  # kills a node still running, removes a temporary datadir
        self._finalizer = None
        self._proc = None
        self._client = None
        self._wallet_client = None
        self.port = None

    # -- RPC -------------------------------------------------------------

    def rpc(self, method: str, *params: Any) -> Any:
        """Call the node; fractions come back as exact `Decimal`, errors as `RpcError`
        (node's code and message, and the method)."""
        if self._client is None:
            raise RuntimeError("regtest node is not running")
        return self._client.call(method, *params)

    def _wallet_rpc(self, method: str, *params: Any) -> Any:
        # The wallet's own endpoint, so a datadir with several loaded wallets still pays from ours.
        if self._wallet_client is None:
            raise RuntimeError("regtest node is not running")
        return self._wallet_client.call(method, *params)

    def height(self) -> int:
        return int(self.rpc("getblockcount"))

    def mempool(self) -> list[str]:
        """Txids in the node's mempool."""
        return list(self.rpc("getrawmempool"))

    # -- mining ------------------------------------------------------------

    def _next_coinbase(self) -> str:
        """A coinbase destination never used before on this node.

        A fork block mined after ``invalidateblock`` on the same parent, with the
        same transactions, within the same second, would otherwise be the very
        block just invalidated, and the node rejects it. An OP_RETURN tag keeps
        devnet coinbases out of the UTXO set and out of every wallet.
        """
        tag = next(self._coinbase_tags) % 2**32
        return f"raw(6a04{tag:08x})"

    def mine(self, n: int = 1, *, to: str | None = None) -> list[str]:
        """Mine `n` blocks now with whatever the mempool holds; returns their hashes.

        `to` pays the coinbases to that address (mature after 100 more blocks).
        """
        _check_count("n", n, minimum=1)
        if to is not None:
            return list(self.rpc("generatetoaddress", n, to))
        return list(self.rpc("generatetodescriptor", n, self._next_coinbase()))

    def mine_empty(self, n: int = 1) -> list[str]:
        """Mine `n` blocks holding no transaction, whatever the mempool holds; their hashes.

        "Mining paused" for everything waiting while heads still advance: what
        makes a fee bumper act, and what a fork's filler blocks are.
        """
        _check_count("n", n, minimum=1)
        return [str(self.rpc("generateblock", self._next_coinbase(), [])["hash"]) for _ in range(n)]

    # -- the node wallet -----------------------------------------------------

    def wallet_send(self, address: str, sats: int) -> str:
        """Pay `sats` to `address` from the node wallet (replaceable), without mining; the txid."""
        self._check_payment(address, sats)
        return str(self._wallet_rpc("sendtoaddress", address, sats_to_coins(sats)))

    def fund(self, address: str, sats: int) -> str:
        """Pay exactly `sats` to `address` from the node wallet and confirm it in one block;
        the new output as "txid:vout"."""
        script = self._check_payment(address, sats)
        txid = str(self._wallet_rpc("sendtoaddress", address, sats_to_coins(sats)))
        self.mine(1)
        tx = self.rpc("getrawtransaction", txid, True)
        if not tx.get("blockhash"):
            raise DevnetError(f"funding tx {txid} was not mined into the next block (mempool: {self.mempool()})")
        for out in tx["vout"]:
            if out["scriptPubKey"]["hex"] == script and out["value"] == sats_to_coins(sats):
                return f"{txid}:{out['n']}"
        raise DevnetError(f"funding tx {txid} has no output of {sats} sats to {address}")

    def _check_payment(self, address: str, sats: int) -> str:
        """Reject a bad amount or an address of another network before any coin moves;
        returns the address's output script (hex)."""
        _check_count("sats", sats, minimum=1)
        if not isinstance(address, str):
            raise TypeError(f"address must be a str, got {type(address).__name__}")
        info = self.rpc("validateaddress", address)
        if not info.get("isvalid"):
            raise ValueError(f"{address!r} is not a valid address on this node's network ({self.network})")
        return str(info["scriptPubKey"])

    # -- reorgs --------------------------------------------------------------

    def reorg(self, depth: int, *, blocks: int | None = None, include: Sequence[str] = ()) -> ReorgResult:
        """Replace the newest `depth` blocks with `blocks` (default depth + 1) fork blocks.

        As in Core, the orphaned blocks' transactions return to the mempool and
        stay there: the fork blocks are empty but for `include` (txids from the
        mempool or the orphaned blocks, or raw signed transactions as hex), all
        mined into the first fork block. So ``reorg(1)`` is "shallow reorg, the
        tx is re-mined later" and ``reorg(1, include=[raw_double_spend])`` is
        "the double-spend won"; the node then drops the conflicting original.
        """
        _check_count("depth", depth, minimum=1)
        blocks = depth + 1 if blocks is None else blocks
        _check_count("blocks", blocks, minimum=1)
        if isinstance(include, str):
            raise TypeError("include takes a sequence of txids / raw tx hex, not a single str")
        tip = self.height()
        if depth > tip:
            raise ValueError(f"cannot replace {depth} blocks: the chain is only {tip} blocks above genesis")
        old_hashes = [str(self.rpc("getblockhash", h)) for h in range(tip - depth + 1, tip + 1)]
        orphaned = [txid for h in old_hashes for txid in self.rpc("getblock", h, 1)["tx"][1:]]
        included = self._included_txids(include, set(orphaned) | set(self.mempool()))

        self.rpc("invalidateblock", old_hashes[0])
        try:
            new_hashes = [str(self.rpc("generateblock", self._next_coinbase(), list(include))["hash"])]
        except RpcError as exc:
            self.rpc("reconsiderblock", old_hashes[0])  # put the original chain back
            raise DevnetError(
                f"reorg: the first fork block, holding include={[t[:16] for t in included]}, is invalid on top "
                f"of height {tip - depth} ({exc}); the original chain is restored. {self.log_tail(600)}"
            ) from exc
        if blocks > 1:
            new_hashes += self.mine_empty(blocks - 1)
        return ReorgResult(
            fork_height=tip - depth,
            old_hashes=old_hashes,
            new_hashes=new_hashes,
            orphaned_txs=orphaned,
            replayed_txs=[txid for txid in included if txid in orphaned],
        )

    def _included_txids(self, include: Sequence[str], known: set[str]) -> list[str]:
        txids = []
        for item in include:
            if not isinstance(item, str) or not _HEX.fullmatch(item):
                raise ValueError(f"include: {item!r} is neither a txid nor a raw transaction in hex")
            if _TXID.fullmatch(item):
                if item.lower() not in known:
                    raise ValueError(f"include: txid {item} is neither in the mempool nor in the replaced blocks")
                txids.append(item.lower())
            else:
                try:
                    txids.append(str(self.rpc("decoderawtransaction", item)["txid"]))
                except RpcError as exc:
                    raise ValueError(f"include: {item[:32]}... is not a raw transaction: {exc.message}") from exc
        return txids


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _cleanup(proc: subprocess.Popen[bytes], temporary_datadir: Path | None) -> None:
    # Module-level (not a method) so the finalizer holds no reference to the node object.
    terminate(proc, grace=5.0)
    if temporary_datadir is not None:
        shutil.rmtree(temporary_datadir, ignore_errors=True)
