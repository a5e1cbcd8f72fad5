"""Batched payouts on a UTXO chain: many intents, one transaction, no double payouts.

With batching on for a chain (``TrackerConfig.batching``), ``ctx.submit`` only checks
its transaction and queues the intent; the chain's tracker leader groups queued
intents into batches.  A batch is a submission of its own (no run) holding the
reserved coins and the signed candidates; its members follow its state and each gets
its own receipt (its output) when its own finality policy holds.

Why batches are immutable once recorded: the members are linked to the batch in the
same transaction that reserves its coins, before anything is signed, and an intent
that arrives later goes into the next batch.  A fee bump re-signs the same members
over the same coins, so no replacement can ever drop an earlier payout (the "additive
RBF" double-payout), and all versions of a batch conflict with each other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from .. import metrics
from ..clock import Clock
from ..errors import ConfigurationError
from ..lograte import FailureLog
from ..states import TERMINAL, RunState, SubmissionState
from ..storage import codec
from ..storage.database import Database
from . import chainstore
from .adapter import BatchBuilder, ChainAdapter, CoinSource, TxRejected
from .candidates import broadcast_latest
from .domain import select_offered
from .tracker_config import Batching

log = logging.getLogger("chainflow.batcher")

Guard = Callable[[], Awaitable[None]]
Rpc = Callable[[Awaitable[Any]], Awaitable[Any]]


def check(chains: dict[str, ChainAdapter], batching: dict[str, Batching]) -> None:
    """Refuse batching for a chain that is not configured or cannot batch, at startup."""
    for name in batching:
        adapter = chains.get(name)
        if adapter is None:
            raise ConfigurationError(f"TrackerConfig.batching names chain {name!r}, which is not configured "
                                     f"(known: {sorted(chains)})")
        if not isinstance(adapter, CoinSource) or not isinstance(adapter, BatchBuilder):
            raise ConfigurationError(f"TrackerConfig.batching names chain {name!r}, but its adapter "
                                     f"{type(adapter).__name__} cannot batch payouts (a UTXO chain's CoinSource "
                                     f"and BatchBuilder are needed)")


def strongest(policies: list[str]) -> str:
    """The batch's own policy: the deepest confirmation count its members ask for, so
    its coins are recorded as spent only once every member is final."""
    return max(policies, key=lambda p: int(json.loads(p).get("n", 0)))


class _Batching(ChainAdapter, CoinSource, BatchBuilder):
    pass


class Batcher:
    """Forms, signs and sends batches for one chain; run by the chain's tracker leader,
    which is one process at a time, so batches are formed in one place."""

    def __init__(self, db: Database, clock: Clock, adapter: Any, policy: Batching, guard: Guard, rpc: Rpc) -> None:
        self.db, self.clock, self.policy, self.guard, self.rpc = db, clock, policy, guard, rpc
        self.adapter: _Batching = adapter
        self.chain = adapter.name
        self._failures = FailureLog(log, f"batcher for {self.chain}")

    async def step(self) -> int:
        """Form the batches that are due, then sign and send every recorded batch not
        yet sent (a crash may have left one); returns how many were sent."""
        queued = await self.db.aread(chainstore.queued, self.chain)
        # a dead-lettered run may be retried by an operator: its payouts, holding
        # nothing while queued, neither fail for good nor join a batch meanwhile
        # a payout a live run shares is that run's too, whatever became of its opener
        ended = [int(q.id) for q in queued if not q.shared and (
            q.run_status is None or (q.run_status in TERMINAL and q.run_status != RunState.DEAD_LETTERED))]
        if ended:
            await self.db.atx(chainstore.fail_queued, ended, "its run ended before the payout was batched; "
                              "nothing was signed", self.clock.time())
        waiting = [q for q in queued if q.shared or (q.run_status is not None and q.run_status not in TERMINAL)]
        now = self.clock.time()
        while waiting and (len(waiting) >= self.policy.max_size
                           or now - float(waiting[0].updated_at) >= self.policy.window):
            left = await self._open(waiting[: self.policy.max_size])
            if left is None:
                break  # coins changed hands meanwhile: the next round selects again
            waiting = left + waiting[self.policy.max_size:]
        sent, failing = 0, False
        for batch in await self.db.aread(chainstore.unsent_batches, self.chain):
            try:
                sent += await self._send(batch)
            except Exception as exc:  # noqa: BLE001 - one batch's trouble must not hold back the others
                await self.guard()  # but a deposed leader stops here, not at every batch
                failing = True
                self._failures.failed(exc, f"could not send batch {int(batch.id)}; trying again next step")
        if not failing:
            self._failures.recovered()
        return sent

    async def _open(self, group: list[sa.Row[Any]]) -> list[sa.Row[Any]] | None:
        """Record a batch for the longest prefix of ``group`` the free coins can fund;
        what is left over waits for the next batch.  A lone payout no coins can fund
        fails with the adapter's reason, nothing reserved."""
        requests = [codec.loads(q.request) for q in group]
        sender = self.adapter.sender()
        coins = await self.rpc(self.adapter.coins(sender))
        offered = await self.db.aread(chainstore.offer, self.chain, coins)
        size = len(group)
        while True:
            merged = self.adapter.merge(requests[:size])
            try:
                chosen = select_offered(self.adapter, merged, offered)
                break
            except TxRejected as exc:
                if size == 1:
                    await self.db.atx(chainstore.fail_queued, [int(group[0].id)], exc.reason, self.clock.time())
                    return group[1:]
                size = (size + 1) // 2
        members = group[:size]
        await self.guard()
        try:
            await self.db.atx(chainstore.open_batch, self.chain, sender, [int(m.id) for m in members],
                              codec.dumps(merged), strongest([m.finality for m in members]), chosen,
                              self.clock.time())
        except chainstore.CoinsTaken as exc:
            log.info("batch on %s not recorded (%s); selecting again next round", self.chain, exc)
            return None
        metrics.inc("chainflow_batches_total", chain=self.chain)
        return group[size:]

    async def _send(self, batch: sa.Row[Any]) -> int:
        """Sign (once) and broadcast a recorded batch: the submission protocol's steps
        3 and 4, with the tracker's leadership as the guard."""
        if batch.state == SubmissionState.ALLOCATED:
            outpoints = await self.db.aread(chainstore.reservation_of, int(batch.id))
            try:
                signed = await self.rpc(self.adapter.sign(codec.loads(batch.request), outpoints, None))
            except TxRejected as exc:
                await self.db.atx(chainstore.fail_unsigned, int(batch.id),
                                  f"signing the batch failed: {exc.reason}", self.clock.time())
                return 0
            await self.db.atx(chainstore.add_attempt, int(batch.id), self.chain, signed, self.clock.time())
            batch = await self.db.aread(chainstore.get, int(batch.id))
        await self.guard()
        await broadcast_latest(self.db, self.clock, None, self.adapter, batch)
        return 1
