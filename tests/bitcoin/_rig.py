"""A payout app on a real regtest node, its tracker stepped by the test.

The worker runs the workflows in the background; the chain's tracker (the real one)
is stepped by hand, right after the test mines, so every scenario happens in an exact
order: a block, then the tracker's view of it.  What the tests assert comes from the
node (its chain, mempool and UTXO set) and from the engine's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

import chainflow as cf
from adapters.bitcoin import BitcoinChain, DescriptorWallet
from adapters.bitcoin.networks import network
from chainflow.chain.tracker import HeadStats, Tracker
from chainflow.storage.schema import reservations, submissions, tx_attempts
from chainflow.testing import CallLog
from devnet import RegtestNode

from ..adapters._btc import master_key
from ..engine._util import running_worker

CHAIN = "btc"
# amounts a JSON run input cannot carry, named in it instead
UNCARRIED = {"decimal": Decimal(150_000)}


def sats(btc: Any) -> int:
    """An exact node amount (``Decimal`` BTC) in satoshis."""
    value = Decimal(btc) * 100_000_000
    assert value == value.to_integral_value(), btc
    return int(value)


def register_payout(app: cf.Chainflow, ledger: CallLog, finality: Any) -> None:
    """reserve -> payout ctx.submit -> credit -> notify, each compensated (two dependent
    steps, so a rollback's order shows).  Ledger lines are "<effect> <order>" (a refund names the payout's txid)."""

    def reserve(order: str) -> str:
        ledger.hit(f"reserve {order}")
        return order

    def unreserve(order: str) -> None:
        ledger.hit(f"unreserve {order}")

    def refund(receipt: cf.Receipt) -> None:
        ledger.hit(f"refund {receipt.tx_hash}")

    def credit(order: str, tx_hash: str) -> dict[str, str]:
        ledger.hit(f"credit {order}")
        return {"order": order, "tx": tx_hash}

    def debit(credited: dict[str, str]) -> None:
        ledger.hit(f"debit {credited['order']}")

    def notify(order: str) -> str:
        ledger.hit(f"notify {order}")
        return order

    def unnotify(order: str) -> None:
        ledger.hit(f"unnotify {order}")

    @app.workflow("payout")
    async def payout(ctx: cf.Context, ev: dict[str, Any]) -> dict[str, Any]:
        order = ev["id"]
        await ctx.step("reserve", reserve, order, compensate=unreserve)
        # the dict `btc.pay` returns, built unchecked, so that what refuses bad input is
        # ctx.submit itself
        tx = {"to": ev["to"], "sats": UNCARRIED.get(ev["sats"], ev["sats"])}
        r = await ctx.submit("pay", chain=CHAIN, tx=tx, idempotency_key=f"payout:{order}", finality=finality,
                             compensate=refund)
        await ctx.step("credit", credit, order, r.tx_hash, compensate=debit)
        await ctx.step("notify", notify, order, compensate=unnotify)
        return {"tx": r.tx_hash, "block_hash": r.block_hash, "fee": r.effective_fee,
                "output": r.output_index}  # type: ignore[attr-defined]


class NodeRig:
    """One app, one wallet of a fresh seed, payees nobody else pays, on a shared node."""

    def __init__(self, node: RegtestNode, db_url: str, ledger: CallLog, *, finality: Any = None,
                 chain: dict[str, Any] | None = None, **tracker: Any) -> None:
        self.node, self.ledger = node, ledger
        wallet = DescriptorWallet(master_key(os.urandom(16), node.network))
        self.btc = BitcoinChain(CHAIN, rpc=node.rpc_url, network=node.network, wallet=wallet, **(chain or {}))
        payees = DescriptorWallet(master_key(os.urandom(16), node.network))
        self.payees = payees.keyring(network(node.network), "payees", 5).addresses
        tracker.setdefault("rebroadcast_blocks", 1)
        tracker.setdefault("start_depth", 0)
        self.config = cf.TrackerConfig(poll_interval=0.05, **tracker)
        self.app = cf.Chainflow(db_url, chains=[self.btc], tracker=self.config, lease_seconds=1.0)
        self.app.ensure_schema()
        register_payout(self.app, ledger, finality or cf.Confirmations(2))
        self.tracker = Tracker(self.app.database, self.app.clock, self.btc, "test-tracker", self.config)

    async def close(self) -> None:
        self.app.engine.dispose()
        await self.btc.aclose()  # no idle keep-alive connection may delay the node's stop

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """The app's worker running workflows; the tracker is ours to step."""
        async with running_worker(self.app, track=False):
            await self.step()  # the tracker's window starts at the current head
            yield

    # --- the chain ----------------------------------------------------------------

    async def step(self) -> HeadStats:
        return await self.tracker.step()

    async def mine(self, n: int = 1) -> None:
        for _ in range(n):
            self.node.mine(1)
            await self.step()

    async def mine_empty(self, n: int = 1) -> None:
        for _ in range(n):
            self.node.mine_empty(1)
            await self.step()

    async def drive(self, done: Callable[[], bool], *, mine: bool = True, timeout: float = 60.0,
                    what: str = "condition") -> None:
        """Step the tracker, mining a block each round, until ``done()`` holds."""
        end = time.monotonic() + timeout
        while True:
            await self.step()
            for _ in range(15):
                if done():
                    return
                await asyncio.sleep(0.03)
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if mine:
                self.node.mine(1)

    async def until_done(self, run_id: str, *, what: str, mine: bool = True) -> cf.RunStatus:
        await self.drive(lambda: self.app.status(run_id).done, mine=mine, what=what)
        return self.app.status(run_id)

    def paid(self, address: str) -> list[tuple[str, int]]:
        """("txid:vout", sats) of every unspent output paying ``address`` in the node's
        active chain (nobody holds the payees' keys: unspent means every one)."""
        scan = self.node.rpc("scantxoutset", "start", [f"addr({address})"])
        return sorted((f"{u['txid']}:{u['vout']}", sats(u["amount"])) for u in scan["unspents"])

    def onchain(self, txid: str) -> dict[str, Any] | None:
        """The node's verbose transaction when it is in the active chain, else None."""
        try:
            tx = self.node.rpc("getrawtransaction", txid, True)
        except Exception:  # noqa: BLE001 - "No such mempool or blockchain transaction"
            return None
        if not tx.get("blockhash"):
            return None
        header = self.node.rpc("getblockheader", tx["blockhash"])
        return tx if header["confirmations"] >= 1 else None

    def decode(self, raw: bytes) -> dict[str, Any]:
        """The node's decoding of signed bytes, with the fee it pays (inputs' values
        read from the chain)."""
        tx = self.node.rpc("decoderawtransaction", bytes(raw).hex())
        spent = sum(sats(self.node.rpc("getrawtransaction", i["txid"], True)["vout"][i["vout"]]["value"])
                    for i in tx["vin"])
        return {**tx, "inputs": sorted(f"{i['txid']}:{i['vout']}" for i in tx["vin"]),
                "fee": spent - sum(sats(o["value"]) for o in tx["vout"])}

    # --- the tables ---------------------------------------------------------------

    def sub(self, order: str) -> Any:
        with self.app.engine.begin() as conn:
            return conn.execute(sa.select(submissions)
                                .where(submissions.c.idempotency_key == f"payout:{order}")).one()

    def subs(self) -> list[Any]:
        with self.app.engine.begin() as conn:
            return list(conn.execute(sa.select(submissions)))

    def state(self, order: str) -> str | None:
        """The payout's submission state; None before the step recorded its intent."""
        with self.app.engine.begin() as conn:
            return conn.execute(sa.select(submissions.c.state)
                                .where(submissions.c.idempotency_key == f"payout:{order}")).scalar()

    def attempts(self, sub_id: int | None = None) -> list[Any]:
        query = sa.select(tx_attempts).order_by(tx_attempts.c.id)
        if sub_id is not None:
            query = query.where(tx_attempts.c.submission_id == sub_id)
        with self.app.engine.begin() as conn:
            return list(conn.execute(query))

    def reservations(self, sub_id: int | None = None) -> list[Any]:
        query = sa.select(reservations).order_by(reservations.c.outpoint)
        if sub_id is not None:
            query = query.where(reservations.c.submission_id == sub_id)
        with self.app.engine.begin() as conn:
            return list(conn.execute(query))

    def reserved(self, sub_id: int) -> list[str]:
        return [r.outpoint for r in self.reservations(sub_id)]

    def held(self, sub_id: int) -> list[str]:
        """Reserved and not recorded as spent by the intent's own final transaction."""
        return [r.outpoint for r in self.reservations(sub_id) if r.spent_at_block is None]

    def effects(self, order: str | None = None) -> list[str]:
        """The ledger's effects (of one order's run), in the order they happened."""
        lines = [line.split() for line in self.ledger.lines()]
        return [effect for effect, who in lines if order is None or who == order]

    def fees(self, attempt: Any) -> dict[str, int]:
        return dict(json.loads(attempt.fees))
