"""Chain state behind the in-process EVM: eth-tester's py-evm chain plus a mempool.

eth-tester's PyEVMBackend provides chain construction and block production;
everything that must behave like a real node (tx admission, mining from a
pool, canonical lookups after rewinds, reorgs, eth_call revert data) is done
here on the underlying py-evm objects. All methods expect `lock` to be held.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

from eth.constants import GENESIS_PARENT_HASH
from eth.exceptions import HeaderNotFound
from eth_tester import PyEVMBackend
from eth_tester.backends.pyevm.main import get_default_genesis_params
from eth_utils.address import to_canonical_address
from eth_utils.exceptions import ValidationError

from devnet.accounts import DevAccount
from devnet.errors import RpcError
from devnet.evm_exec import CallRequest, Executor
from devnet.evm_fees import FeeHistory, fee_history
from devnet.mempool import TX_REJECTED, Mempool, PoolTx

_SUPPORTED_TX_TYPES = {0, 1, 2, 4}  # blob txs need sidecars, which this devnet does not model


class EvmChain:
    """Single-writer chain model; callers serialize access with `lock`."""

    def __init__(
        self,
        *,
        chain_id: int,
        accounts: list[DevAccount],
        balance_wei: int,
        base_fee: int | None = None,
        gas_limit: int | None = None,
        finality_depth: int = 0,
        automine: bool = True,
        price_bump_percent: int = 10,
        priority_fee: int = 10**9,
    ) -> None:
        self.lock = threading.RLock()
        self.chain_id = chain_id
        self.finality_depth = finality_depth
        self.automine = automine
        self.priority_fee = priority_fee
        self.pool = Mempool(price_bump_percent)
        self._dev_keys: dict[bytes, str] = {
            bytes(to_canonical_address(a.address)): a.private_key for a in accounts
        }
        self._backend = _build_backend(chain_id, accounts, balance_wei, base_fee, gas_limit)
        self._tx_block: dict[bytes, int] = {}
        self._snapshots: dict[int, bytes] = {}
        self._snapshot_ids = itertools.count(1)

    # -- basic views --------------------------------------------------------

    @property
    def chain(self) -> Any:
        # Re-read every time: eth-tester replaces the chain object when rewinding to genesis.
        return self._backend.chain

    def dev_key(self, address: bytes) -> str | None:
        return self._dev_keys.get(address)

    def dev_addresses(self) -> list[bytes]:
        return list(self._dev_keys)

    def latest_number(self) -> int:
        return int(self.chain.get_canonical_head().block_number)

    def resolve(self, ref: str | int) -> int | None:
        """Map a block tag/number to a canonical height (None if beyond head); 'pending' maps to latest."""
        latest = self.latest_number()
        if isinstance(ref, int):
            return ref if 0 <= ref <= latest else None
        if ref in ("latest", "pending"):
            return latest
        if ref == "earliest":
            return 0
        if ref in ("safe", "finalized"):
            return max(0, latest - self.finality_depth)
        raise RpcError(-32602, f"invalid block tag {ref!r}")

    def block(self, number: int) -> Any:
        """Canonical block at `number`; only heights <= head are trusted.

        py-evm leaves stale number->hash entries above the head after a rewind,
        so every lookup must be bounded by the head first.
        """
        if not 0 <= number <= self.latest_number():
            raise HeaderNotFound(number)
        return self.chain.get_canonical_block_by_number(number)

    def pending_block(self) -> Any:
        return self.chain.get_block()

    def block_by_hash(self, block_hash: bytes) -> Any | None:
        """Canonical block with this hash; blocks orphaned by a reorg count as unknown (like anvil)."""
        try:
            header = self.chain.get_block_header_by_hash(block_hash)
        except HeaderNotFound:
            return None
        number = int(header.block_number)
        if number > self.latest_number():
            return None
        if self.chain.get_canonical_block_header_by_number(number).hash != header.hash:
            return None
        return self.chain.get_block_by_hash(block_hash)

    def receipts(self, block: Any) -> list[Any]:
        return list(block.get_receipts(self.chain.chaindb))

    def next_base_fee(self) -> int:
        return int(self.chain.header.base_fee_per_gas)

    def find_transaction(self, tx_hash: bytes) -> tuple[Any, int] | None:
        """(block, index) of a mined canonical tx; verified because reorgs invalidate the index."""
        number = self._tx_block.get(tx_hash)
        if number is None or number > self.latest_number():
            return None
        block = self.block(number)
        for index, tx in enumerate(block.transactions):
            if tx.hash == tx_hash:
                return block, index
        return None

    # -- account state ------------------------------------------------------

    def state_at(self, ref: str | int) -> Any:
        """Post-state of a block. 'latest' includes direct edits (anvil_setBalance) not yet mined."""
        number = self.resolve(ref)
        if number is None:
            raise RpcError(-32000, "header not found")
        return self._vm_at(number).state

    def _vm_at(self, number: int, *, zero_base_fee: bool = False) -> Any:
        header = self.chain.get_canonical_block_header_by_number(number)
        if number == self.latest_number():
            header = header.copy(state_root=self.chain.header.state_root)
        if zero_base_fee and getattr(header, "base_fee_per_gas", None) is not None:
            header = header.copy(base_fee_per_gas=0)
        return self.chain.get_vm(at_header=header)

    def state_nonce(self, address: bytes) -> int:
        return int(self.state_at("latest").get_nonce(address))

    def pending_nonce(self, address: bytes) -> int:
        return self.pool.pending_nonce(address, self.state_nonce(address))

    def set_balance(self, address: bytes, wei: int) -> None:
        """Edit the pending state in place, visible at 'latest' at once (anvil_setBalance semantics)."""
        state = self.chain.get_vm().state
        state.set_balance(address, wei)
        state.persist()
        self.chain.header = self.chain.header.copy(state_root=state.state_root)

    # -- transactions -------------------------------------------------------

    def decode_raw(self, raw: bytes) -> Any:
        if not raw:
            raise RpcError(-32602, "empty transaction")
        if raw[0] < 0x7F and raw[0] not in _SUPPORTED_TX_TYPES:
            raise RpcError(TX_REJECTED, "transaction type not supported")
        try:
            tx = self.chain.get_vm().get_transaction_builder().decode(raw)
        except Exception as exc:  # rlp/typing errors come in many flavours
            raise RpcError(TX_REJECTED, f"rlp: failed to decode transaction: {exc}") from exc
        return tx

    def submit(self, raw: bytes) -> bytes:
        """eth_sendRawTransaction: admit to the pool, then mine at once if automining."""
        tx = self.decode_raw(raw)
        self._validate_for_pool(tx)
        entry = self.pool.make_entry(tx)
        self.pool.add(entry, self.state_nonce(entry.sender))
        if self.automine:
            self.mine(1)
        return entry.hash

    def _validate_for_pool(self, tx: Any) -> None:
        if tx.hash in self.pool:
            raise RpcError(TX_REJECTED, "already known")
        try:
            tx.validate()
            sender = bytes(tx.sender)
        except ValidationError as exc:
            if "insufficient gas" in str(exc).lower():
                raise RpcError(TX_REJECTED, "intrinsic gas too low") from exc
            raise RpcError(TX_REJECTED, f"invalid transaction: {exc}") from exc
        except Exception as exc:  # bad signature
            raise RpcError(TX_REJECTED, "invalid sender") from exc
        tx_chain_id = getattr(tx, "chain_id", None)
        if tx_chain_id is not None and tx_chain_id != self.chain_id:
            raise RpcError(
                TX_REJECTED, f"invalid chain id for signer: have {tx_chain_id} want {self.chain_id}"
            )
        if tx.gas > self.chain.header.gas_limit:
            raise RpcError(TX_REJECTED, "exceeds block gas limit")
        if tx.max_priority_fee_per_gas > tx.max_fee_per_gas:
            raise RpcError(TX_REJECTED, "max priority fee per gas higher than max fee per gas")
        state = self.state_at("latest")
        state_nonce = int(state.get_nonce(sender))
        if tx.nonce < state_nonce:
            raise RpcError(
                TX_REJECTED, f"nonce too low: address 0x{sender.hex()}, tx: {tx.nonce} state: {state_nonce}"
            )
        balance = int(state.get_balance(sender))
        cost = tx.gas * tx.max_fee_per_gas + tx.value
        if balance < cost:
            raise RpcError(
                TX_REJECTED,
                f"insufficient funds for gas * price + value: address 0x{sender.hex()} "
                f"have {balance} want {cost}",
            )

    def drop(self, tx_hash: bytes) -> bool:
        return self.pool.remove(tx_hash) is not None

    def raw_transaction(self, tx_hash: bytes) -> bytes | None:
        entry = self.pool.get(tx_hash)
        if entry is not None:
            return bytes(entry.tx.encode())
        found = self.find_transaction(tx_hash)
        if found is None:
            return None
        block, index = found
        return bytes(block.transactions[index].encode())

    # -- mining -------------------------------------------------------------

    def mine(self, count: int = 1) -> list[bytes]:
        """Mine `count` blocks, each filled from the pool (best tip first)."""
        hashes: list[bytes] = []
        for _ in range(count):
            base_fee = self.next_base_fee()
            included = self.pool.select_for_block(self.state_nonce_pending_block, base_fee, self._try_include)
            hashes.append(self._seal_block())
            for entry in included:
                self.pool.remove(entry.hash)
            self.pool.prune_stale(self.state_nonce)
        return hashes

    def state_nonce_pending_block(self, address: bytes) -> int:
        # Nonce as of the block being built, so a sender's later txs line up after earlier ones.
        return int(self.chain.get_vm().state.get_nonce(address))

    def _try_include(self, entry: PoolTx) -> bool:
        try:
            self.chain.apply_transaction(entry.tx)
        except ValidationError as exc:
            if "gas limit" not in str(exc):
                self.pool.remove(entry.hash)  # can never execute (e.g. balance spent meanwhile)
            return False
        return True

    def _seal_block(self) -> bytes:
        (block_hash,) = self._backend.mine_blocks(1)
        self._index_block(self.latest_number())
        return bytes(block_hash)

    def _index_block(self, number: int) -> None:
        for tx in self.chain.get_canonical_block_by_number(number).transactions:
            self._tx_block[bytes(tx.hash)] = number

    def include_now(self, raws: list[bytes]) -> None:
        """Apply raw txs straight into the block being built (reorg replays bypass the pool)."""
        for raw in raws:
            tx = self.decode_raw(raw)
            try:
                self.chain.apply_transaction(tx)
            except ValidationError as exc:
                raise RpcError(TX_REJECTED, f"cannot include {tx.hash.hex()}: {exc}") from exc
            self.pool.remove(bytes(tx.hash))

    # -- history manipulation -------------------------------------------------

    def _rewind_to(self, header: Any) -> None:
        """Make `header` (a canonical ancestor of the head) the new head."""
        if header.block_number == 0:
            # eth-tester rebuilds the chain object for genesis; reuse its path.
            self._backend.revert_to_snapshot(header.hash)
            return
        chaindb = self.chain.chaindb
        chaindb._set_as_canonical_chain_head(chaindb.db, header, GENESIS_PARENT_HASH)
        self.chain.header = self.chain.create_header_from_parent(header)

    def _rewind_by(self, depth: int) -> None:
        """Cut the newest `depth` blocks; like anvil, snapshots of the cut blocks die with them."""
        fork_height = self.latest_number() - depth
        self._rewind_to(self.chain.get_canonical_block_header_by_number(fork_height))
        for snapshot_id, block_hash in list(self._snapshots.items()):
            if self.chain.get_block_header_by_hash(block_hash).block_number > fork_height:
                del self._snapshots[snapshot_id]

    def snapshot(self) -> int:
        snapshot_id = next(self._snapshot_ids)
        self._snapshots[snapshot_id] = bytes(self.chain.get_canonical_head().hash)
        return snapshot_id

    def revert(self, snapshot_id: int) -> bool:
        """Rewind to a snapshot; it and all later snapshots are consumed (ganache/anvil semantics)."""
        block_hash = self._snapshots.get(snapshot_id)
        if block_hash is None:
            return False
        for later in [sid for sid in self._snapshots if sid >= snapshot_id]:
            del self._snapshots[later]
        self._rewind_to(self.chain.get_block_header_by_hash(block_hash))
        return True

    def rollback(self, depth: int) -> None:
        latest = self.latest_number()
        if not 0 < depth <= latest:
            raise RpcError(-32602, f"rollback depth must be in 1..{latest}, got {depth}")
        self._rewind_by(depth)

    def reorg(self, depth: int, replay: list[tuple[bytes, int]]) -> list[bytes]:
        """anvil_reorg: replace the newest `depth` blocks by as many new ones.

        `replay` holds (raw tx, block offset) pairs to put into the
        replacement blocks; orphaned transactions are otherwise dropped,
        matching anvil.
        """
        latest = self.latest_number()
        if not 0 < depth <= latest:
            raise RpcError(-32602, f"reorg depth must be in 1..{latest}, got {depth}")
        if any(not 0 <= offset < depth for _, offset in replay):
            raise RpcError(-32602, "replay block offset outside the reorged range")
        self._rewind_by(depth)
        hashes: list[bytes] = []
        for offset in range(depth):
            self.include_now([raw for raw, at in replay if at == offset])
            hashes.append(self._seal_block())
        self.pool.prune_stale(self.state_nonce)
        return hashes

    # -- execution without mining -------------------------------------------

    def executor(self, ref: str | int, *, with_fees: bool) -> Executor:
        """Executor on a block's post-state.

        Like geth, requests without fee fields run with base fee 0 so unfunded
        callers (eth_call without `from`) work.
        """
        number = self.resolve(ref)
        if number is None:
            raise RpcError(-32000, "header not found")
        vm = self._vm_at(number, zero_base_fee=not with_fees)
        return Executor(vm, self.chain_id, int(self.chain.header.gas_limit))

    def call(self, request: CallRequest, ref: str | int) -> bytes:
        return self.executor(ref, with_fees=request.has_fee).call(request)

    def estimate_gas(self, request: CallRequest, ref: str | int) -> int:
        return self.executor(ref, with_fees=request.has_fee).estimate_gas(request)

    def fee_history(self, count: int, newest: int, percentiles: list[float]) -> FeeHistory:
        oldest = max(0, newest - count + 1)
        blocks = [self.block(n) for n in range(oldest, newest + 1)]
        following = newest + 1
        next_fee = (
            int(self.block(following).header.base_fee_per_gas)
            if following <= self.latest_number()
            else self.next_base_fee()
        )
        return fee_history(blocks, next_fee, percentiles, self.receipts)

    # -- logs -----------------------------------------------------------------

    def iter_blocks(self, first: int, last: int) -> Iterator[Any]:
        for number in range(first, min(last, self.latest_number()) + 1):
            yield self.block(number)


def _build_backend(
    chain_id: int,
    accounts: list[DevAccount],
    balance_wei: int,
    base_fee: int | None,
    gas_limit: int | None,
) -> PyEVMBackend:
    genesis_state = {
        to_canonical_address(acct.address): {"balance": balance_wei, "nonce": 0, "code": b"", "storage": {}}
        for acct in accounts
    }
    genesis_params = get_default_genesis_params()
    if gas_limit is not None:
        genesis_params["gas_limit"] = gas_limit
    if base_fee is not None:
        # Not an eth-tester override key; passing full params skips its whitelist merge.
        genesis_params["base_fee_per_gas"] = base_fee
    backend = PyEVMBackend(genesis_parameters=genesis_params, genesis_state=genesis_state)
    # eth-tester builds a fresh chain class per backend with a hard-coded chain id;
    # setting it on that class keeps it across eth-tester's genesis rebuilds.
    type(backend.chain).chain_id = chain_id
    return backend
