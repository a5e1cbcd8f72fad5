"""What every devnet flavour offers, so helpers (reorg, token, tests) stay backend-agnostic."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from devnet.accounts import DevAccount, derive_accounts
from devnet.rpc import JsonRpcClient, to_quantity


@runtime_checkable
class Devnet(Protocol):
    """Structural interface shared by `Anvil` and `InProcessEVM`."""

    @property
    def rpc_url(self) -> str: ...

    def rpc(self, method: str, *params: Any) -> Any: ...

    def block_number(self) -> int: ...

    def mine(self, n: int = 1) -> None: ...

    def set_automine(self, enabled: bool) -> None: ...

    def snapshot(self) -> str: ...

    def revert(self, snapshot_id: str) -> bool: ...

    def reorg(self, depth: int, txs: list[tuple[str, int]] | None = None) -> None: ...

    def rollback(self, depth: int = 1) -> None: ...

    def drop_tx(self, tx_hash: str) -> None: ...

    def set_balance(self, address: str, wei: int) -> None: ...

    def mempool(self) -> dict[str, Any]: ...

    def accounts(self) -> list[DevAccount]: ...

    def stop(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Lifecycle:
    """`with node:` starts it and always stops it, for every devnet (EVM or regtest)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RpcControls(Lifecycle):
    """Devnet control calls that both backends answer with the same JSON-RPC methods.

    Kept as a mixin over plain JSON-RPC (rather than calling the in-process
    chain directly) so the in-process EVM is exercised through exactly the
    same wire path a separate process would use.
    """

    _client: JsonRpcClient | None = None
    mnemonic: str
    account_count: int
    derivation_path: str

    def _configure(self, *, chain_id: int, block_time: float | None, base_fee: int | None, gas_limit: int | None,
                   accounts: int, mnemonic: str, derivation_path: str, balance_eth: int) -> None:
        """The options both backends take, checked the same way."""
        if block_time is not None and block_time <= 0:
            raise ValueError("block_time must be positive")
        self.chain_id = chain_id
        self.block_time = block_time
        self.base_fee = base_fee
        self.gas_limit = gas_limit
        self.account_count = accounts
        self.mnemonic = mnemonic
        self.derivation_path = derivation_path
        self.balance_eth = balance_eth

    def accounts(self) -> list[DevAccount]:
        """The funded dev accounts with their (public, well-known) private keys; the
        same on both devnets for the same mnemonic."""
        return derive_accounts(self.mnemonic, self.account_count, self.derivation_path)

    def _rpc_client(self) -> JsonRpcClient:
        if self._client is None:
            raise RuntimeError("devnet is not running")
        return self._client

    def rpc(self, method: str, *params: Any) -> Any:
        """Raw JSON-RPC escape hatch for anything without a helper."""
        return self._rpc_client().call(method, *params)

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, n: int = 1) -> None:
        """Mine `n` blocks now, including whatever the mempool allows."""
        if n < 1:
            raise ValueError("n must be >= 1")
        self.rpc("anvil_mine", to_quantity(n))

    def set_automine(self, enabled: bool) -> None:
        """Toggle mining one block per submitted transaction."""
        self.rpc("evm_setAutomine", enabled)

    def snapshot(self) -> str:
        """Snapshot the chain; the id is opaque and single-use on anvil."""
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> bool:
        """Roll the chain back to `snapshot_id`; False if the id is unknown."""
        return bool(self.rpc("evm_revert", snapshot_id))

    def reorg(self, depth: int, txs: list[tuple[str, int]] | None = None) -> None:
        """Replace the newest `depth` blocks by new ones at the same heights (anvil_reorg).

        `txs` are `(raw_signed_tx_hex, block_offset)` pairs to include in the
        replacement blocks, offset 0 being the first replaced height.
        """
        self.rpc("anvil_reorg", depth, [[raw, offset] for raw, offset in (txs or [])])

    def rollback(self, depth: int = 1) -> None:
        """Drop the newest `depth` blocks without replacement (anvil_rollback)."""
        self.rpc("anvil_rollback", depth)

    def drop_tx(self, tx_hash: str) -> None:
        """Remove a pending transaction from the mempool."""
        self.rpc("anvil_dropTransaction", tx_hash)

    def set_balance(self, address: str, wei: int) -> None:
        self.rpc("anvil_setBalance", address, to_quantity(wei))

    def mempool(self) -> dict[str, Any]:
        """`txpool_content`: {"pending": {addr: {nonce: tx}}, "queued": {...}}."""
        result = self.rpc("txpool_content")
        return dict(result) if result else {"pending": {}, "queued": {}}


class AttachedEVM(RpcControls):
    """Controls of an EVM devnet another process runs (``chainflow devnet``'s anvil or
    in-process EVM), reached at ``rpc_url``: mine, reorg, set balances, the dev accounts."""

    def __init__(self, rpc_url: str, *, chain_id: int, accounts: int, mnemonic: str, derivation_path: str) -> None:
        self._configure(chain_id=chain_id, block_time=None, base_fee=None, gas_limit=None, accounts=accounts,
                        mnemonic=mnemonic, derivation_path=derivation_path, balance_eth=0)
        self.rpc_url = rpc_url
        self._client = JsonRpcClient(rpc_url, timeout=10.0)
