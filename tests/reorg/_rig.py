"""A devnet, a token, an app with one EVM chain, and a tracker the test steps by hand.

The worker runs with ``track=False`` in most tests: the test calls ``Rig.step()``
(one ``Tracker.step()``: follow the head, detect reorgs, match, settle, unstick) and
mines blocks itself, so "the tracker has seen block N" and "the reorg happens now" are
exact points in the test, not races with a background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from eth_account import Account
from eth_typing import HexStr
from web3 import Web3

import chainflow as cf
from adapters.evm import EvmChain, EvmReceipt, LocalSigner
from chainflow.chain.tracker import HeadStats, Tracker
from chainflow.states import TERMINAL
from chainflow.storage.schema import submissions, tx_attempts
from devnet import deploy_token, token_contract

from ..conftest import CallLog
from ..engine._util import running_worker, wait_status

CHAIN = "local"
PREMINE = 4  # blocks above the token's deployment: deep reorgs below a run's tx keep the token


class Rig:
    def __init__(self, net: Any, db_url: str, ledger: CallLog, **tracker: Any) -> None:
        self.net = net
        self.w3 = Web3(Web3.HTTPProvider(net.rpc_url, request_kwargs={"timeout": 10}))
        self.minter = net.accounts()[0]
        self.token = token_contract(self.w3, deploy_token(self.w3, self.minter.private_key, max_mint=10**12))
        net.mine(PREMINE)
        tracker.setdefault("poll_interval", 0.05)
        tracker.setdefault("rebroadcast_blocks", 1)
        self.config = cf.TrackerConfig(**tracker)
        self._connect(db_url)
        self.heads: list[HeadStats] = []
        self.ledger = ledger

    def _connect(self, db_url: str) -> None:
        """The adapter, app and tracker, as a process on this chain and database makes them."""
        self.adapter = EvmChain(CHAIN, self.net.rpc_url, LocalSigner.from_key(self.minter.private_key))
        self.app = cf.Chainflow(db_url, chains=[self.adapter], tracker=self.config, lease_seconds=10.0)
        self.app.ensure_schema()
        self.tracker = Tracker(self.app.database, self.app.clock, self.adapter, "test-tracker", self.config)

    async def reopen(self) -> None:
        """Close and make the adapter, app and tracker anew: another process on the same
        database, chain and sender (workflows must be registered again)."""
        url = self.app.database.url
        await self.close()
        self._connect(url)

    async def close(self) -> None:
        await self.adapter.aclose()
        self.app.engine.dispose()

    # --- chain -------------------------------------------------------------------

    def mint(self, amount: int = 5) -> Any:
        """The contract call a workflow submits: mint ``amount`` tokens to the minter."""
        return self.token.functions.mint(self.minter.address, amount)

    async def mine(self, n: int = 1) -> None:
        await asyncio.to_thread(self.net.mine, n)

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def balance(self) -> int:
        return int(self.token.functions.balanceOf(self.minter.address).call())

    def chain_tx(self, tx_hash: str) -> Any:
        """The transaction as the node has it now (None when it is in no block and no pool)."""
        try:
            return self.w3.eth.get_transaction(HexStr(tx_hash))
        except Exception:  # noqa: BLE001 - TransactionNotFound
            return None

    def mined_block(self, tx_hash: str, timeout: float = 10.0) -> int:
        """The block holding ``tx_hash``, waiting for it: anvil's automine seals the block
        in the background, shortly *after* answering the broadcast."""
        end = time.monotonic() + timeout
        while True:
            tx = self.chain_tx(tx_hash)
            if tx is not None and tx.blockNumber is not None:
                return int(tx.blockNumber)
            if time.monotonic() > end:
                raise AssertionError(f"{tx_hash} not mined after {timeout}s")
            time.sleep(0.01)

    def foreign_tx(self, nonce: int) -> str:
        """A different transaction from the minter's key with ``nonce``, signed outside
        chainflow (eth-account directly): a 1-wei transfer to account 1."""
        block = self.w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas") or 10**9)
        tx = {
            "type": 2, "chainId": int(self.w3.eth.chain_id), "nonce": nonce,
            "to": self.net.accounts()[1].address, "value": 1, "gas": 21_000, "data": b"",
            "maxFeePerGas": 4 * base + 10 * 10**9, "maxPriorityFeePerGas": 10 * 10**9,
        }
        signed = Account.sign_transaction(tx, self.minter.private_key)
        return "0x" + bytes(signed.raw_transaction).hex()

    # --- tracker -----------------------------------------------------------------

    async def step(self) -> HeadStats:
        stats = await self.tracker.step()
        self.heads.append(stats)
        return stats

    async def drive(self, done: Callable[[], Any], *, mine: bool = True, timeout: float = 30.0,
                    what: str = "condition") -> None:
        """Step the tracker (and mine a block) until ``done()`` holds."""
        end = time.monotonic() + timeout
        while True:
            await self.step()
            for _ in range(5):  # give the worker a moment to act on what the tracker settled
                value = done()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.02)
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if mine:
                await self.mine()

    # --- engine ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def worker(self, **options: Any) -> AsyncIterator[Any]:
        options.setdefault("track", False)
        async with running_worker(self.app, stop_within=20.0, **options) as worker:
            yield worker

    async def status(self, run_id: str) -> cf.RunStatus:
        return await self.app.astatus(run_id)

    async def wait_status(self, run_id: str, statuses: tuple[str, ...] = TERMINAL,
                          timeout: float = 20.0) -> cf.RunStatus:
        return await wait_status(self.app, run_id, statuses, timeout)

    def sub(self, key: str) -> Any:
        with self.app.engine.begin() as conn:
            return conn.execute(sa.select(submissions).where(submissions.c.idempotency_key == key)).one()

    def subs(self) -> list[Any]:
        with self.app.engine.begin() as conn:
            return list(conn.execute(sa.select(submissions).order_by(submissions.c.id)))

    def attempts(self, sub_id: int) -> list[Any]:
        with self.app.engine.begin() as conn:
            return list(conn.execute(
                sa.select(tx_attempts).where(tx_attempts.c.submission_id == sub_id).order_by(tx_attempts.c.id)))

    def live(self, run_id: str) -> list[str]:
        """"branch/key" (or "key") of every live journal row, in recording order."""
        return [label(e) for e in self.app.journal(run_id) if not e.invalidated]

    def invalidated(self, run_id: str) -> list[cf.JournalEntry]:
        return [e for e in self.app.journal(run_id) if e.invalidated]

    def effects(self) -> list[str]:
        """Names of ledger lines (first word), in execution order."""
        return [line.split()[0] for line in self.ledger.lines()]


def label(e: Any) -> str:
    return f"{e.branch}/{e.key}" if e.branch else e.key


def build_rig(net: Any, db_url: str, ledger: CallLog, **tracker: Any) -> Rig:
    return Rig(net, db_url, ledger, **tracker)


def register_mint_flow(rig: Rig, finality: Any, name: str = "mint_flow") -> None:
    """reserve (compensated) -> submit mint (compensated by a burn) -> credit -> notify
    (both compensated).  Every side effect is a ledger line "<what> <detail>"."""
    ledger = rig.ledger

    def reserve(order: str) -> str:
        ledger.hit(f"reserve {order}")
        return order

    def unreserve(order: str) -> None:
        ledger.hit(f"unreserve {order}")

    def burn(receipt: Any) -> None:
        ledger.hit(f"burn {receipt.tx_hash}")

    def credit(tx_hash: str) -> str:
        ledger.hit(f"credit {tx_hash}")
        return tx_hash

    def debit(tx_hash: str) -> None:
        ledger.hit(f"debit {tx_hash}")

    def notify(tx_hash: str) -> str:
        ledger.hit(f"notify {tx_hash}")
        return tx_hash

    def unnotify(tx_hash: str) -> None:
        ledger.hit(f"unnotify {tx_hash}")

    @rig.app.workflow(name)
    async def flow(ctx: cf.Context, ev: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("reserve", reserve, ev["id"], compensate=unreserve)
        r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(5), idempotency_key=ev["id"], finality=finality,
                             compensate=burn)
        tx = await ctx.step("credit", credit, r.tx_hash, compensate=debit)
        await ctx.step("notify", notify, tx, compensate=unnotify)
        assert isinstance(r, EvmReceipt)
        return {"tx": r.tx_hash, "block": r.block_number, "block_hash": r.block_hash, "nonce": r.nonce}
