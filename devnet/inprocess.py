"""In-process EVM devnet (eth-tester + py-evm) served as a real HTTP JSON-RPC node.

Exists so tests get node semantics (mempool, reorgs, revert data, other
processes connecting by URL) without a native binary: anything that can talk
to anvil over HTTP can talk to this, just slower and with fewer cheatcodes.
"""

from __future__ import annotations

import weakref
from typing import Any, Self

from devnet.accounts import (
    DEFAULT_ACCOUNT_COUNT,
    DEFAULT_BALANCE_ETH,
    DEFAULT_DERIVATION_PATH,
    DEFAULT_MNEMONIC,
)
from devnet.base import RpcControls
from devnet.evm_chain import EvmChain
from devnet.evm_rpc import EvmRpc
from devnet.jsonrpc_http import JsonRpcHttpServer
from devnet.rpc import JsonRpcClient

_WEI_PER_ETH = 10**18


class InProcessEVM(RpcControls):
    """py-evm chain behind a loopback JSON-RPC endpoint, served from a daemon thread."""

    def __init__(
        self,
        *,
        chain_id: int = 1337,
        automine: bool = True,
        block_time: float | None = None,
        base_fee: int | None = None,
        gas_limit: int | None = None,
        accounts: int = DEFAULT_ACCOUNT_COUNT,
        mnemonic: str = DEFAULT_MNEMONIC,
        derivation_path: str = DEFAULT_DERIVATION_PATH,
        balance_eth: int = DEFAULT_BALANCE_ETH,
        finality_depth: int = 0,
        price_bump_percent: int = 10,
        priority_fee: int = 10**9,
    ) -> None:
        """`finality_depth`: 'safe'/'finalized' resolve to latest minus this many blocks.

        `base_fee` is the genesis base fee; later blocks follow EIP-1559 from it.
        `block_time` adds interval mining on top of (or instead of) automine.
        """
        self._configure(chain_id=chain_id, block_time=block_time, base_fee=base_fee, gas_limit=gas_limit,
                        accounts=accounts, mnemonic=mnemonic, derivation_path=derivation_path,
                        balance_eth=balance_eth)
        self.automine = automine
        self.finality_depth = finality_depth
        self.price_bump_percent = price_bump_percent
        self.priority_fee = priority_fee
        self.chain: EvmChain | None = None
        self._rpc_impl: EvmRpc | None = None
        self._server: JsonRpcHttpServer | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None

    @property
    def rpc_url(self) -> str:
        if self._server is None:
            raise RuntimeError("in-process EVM is not running")
        return self._server.url

    @property
    def port(self) -> int | None:
        return self._server.port if self._server else None

    def is_running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        if self._server is not None:
            return self
        self.chain = EvmChain(
            chain_id=self.chain_id,
            accounts=self.accounts(),
            balance_wei=self.balance_eth * _WEI_PER_ETH,
            base_fee=self.base_fee,
            gas_limit=self.gas_limit,
            finality_depth=self.finality_depth,
            automine=self.automine,
            price_bump_percent=self.price_bump_percent,
            priority_fee=self.priority_fee,
        )
        self._rpc_impl = EvmRpc(self.chain)
        # Binding port 0 lets the kernel pick: no probe-then-bind race as with anvil.
        self._server = JsonRpcHttpServer(self._rpc_impl.dispatch)
        self._server.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._server, self._rpc_impl)
        self._client = JsonRpcClient(self._server.url)
        if self.block_time is not None:
            self.set_interval_mining(self.block_time)
        return self

    def stop(self) -> None:
        """Shut the server and background miner down (idempotent, also runs at exit)."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._server = None
        self._rpc_impl = None
        self._client = None

    def set_interval_mining(self, seconds: float) -> None:
        """Mine every `seconds` (fractions allowed in-process, unlike anvil); 0 disables."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        if self._rpc_impl is None or self.chain is None:
            raise RuntimeError("in-process EVM is not running")
        # Direct call: the JSON-RPC method only takes whole seconds (anvil compatible).
        with self.chain.lock:
            self._rpc_impl.set_interval_mining(seconds)

    def set_finality_depth(self, depth: int) -> None:
        """How far 'safe'/'finalized' trail 'latest'; adjustable mid-test to simulate finality lag."""
        if depth < 0:
            raise ValueError("depth must be >= 0")
        self.finality_depth = depth
        if self.chain is not None:
            with self.chain.lock:
                self.chain.finality_depth = depth


def _shutdown(server: JsonRpcHttpServer, rpc_impl: EvmRpc) -> None:
    rpc_impl.shutdown()
    server.stop()
