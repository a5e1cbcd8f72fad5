"""Conflict domains: what makes every version of one intent exclude the others.

An intent (one idempotency key) is bound forever to a *conflict domain* chosen so that
all its versions (the original, fee bumps, replacements) conflict with each other and
at most one can ever be included:

* an account chain (the adapter is a ``NonceSource``): the ``(sender, nonce)`` pair,
  handed out by the nonce table.  A nonce that will never be signed blocks every later
  one, so it is burned by a gap fill (a 0-value self-transfer);
* a UTXO chain (the adapter is a ``CoinSource``): the set of outpoints reserved for the
  intent, durably and exclusively (``cf_reservations``).  Every version spends all of
  them.  Nothing blocks anything else, so there are no gaps to repair; coins go back
  only when the intent provably never signed (its run ended first, or signing failed
  for good), never because a transaction left a mempool.

The engine picks the strategy from the protocol the adapter implements
(``domain_for``).  Each answers the same questions for the protocol and the tracker:
bind a domain to an intent, the value a signature needs, whether the domain is used on
chain (by one of our candidates or by a foreign transaction), and how a never-signed
intent frees it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import sqlalchemy as sa

from ..clock import Clock
from ..errors import ConfigurationError
from ..states import SubmissionState
from ..storage import codec
from ..storage.database import Database
from . import chainstore, finality
from .adapter import ChainAdapter, Coin, CoinSource, NonceSource, TxRejected
from .candidates import broadcast_latest

Commit = Callable[..., Awaitable[list[Any]]]  # RunScope.commit or Database-backed twin
Rpc = Callable[[Awaitable[Any]], Awaitable[Any]]  # the tracker's counting wrapper
Guard = Callable[[], Awaitable[None]]

# selections lost to a concurrent worker before the step gives up for this attempt
# (it is retried under the step's policy): each loss means another intent got coins
RESERVE_TRIES = 5


class ConflictDomain(Protocol):
    kind: str

    async def allocate(self, commit: Commit, sub_id: int, sender: str, request: dict[str, Any],
                       now: float) -> sa.Row[Any]:
        """Bind a domain to the intent (state ``intent`` -> ``allocated``), durably; the
        submission as it is then (read in the same transaction)."""

    async def bound(self, sub: sa.Row[Any]) -> Any:
        """The domain bound to this intent, as ``TxBuilder.sign`` takes it."""

    async def used(self, subs: list[sa.Row[Any]], rpc: Rpc) -> dict[int, str]:
        """Of ``subs``, those whose domain is used in the canonical chain (or made
        impossible there: a reserved coin that can never exist), each with the sentence
        failing it should none of its own candidates be what used it: that is for the
        caller to tell, from the candidates' receipts."""

    async def abandon(self, sub: sa.Row[Any], guard: Guard) -> str | None:
        """Free the domain of an intent that never signed and never will; the reason
        to record, or None when there is none to record: this process cannot (another
        sender's nonce), or the freeing recorded it (only if still unsigned)."""

    async def fail_unsigned(self, commit: Commit, sub: sa.Row[Any], reason: str, guard: Guard) -> None:
        """Signing failed for good before any version existed: free the domain and fail
        the intent with ``reason``, its failure committed through ``commit``."""

    async def release_failed(self, head: int, rpc: Rpc) -> int:
        """Free what failed intents still hold once the foreign transaction that failed
        them is final; how many were freed."""


def domain_for(adapter: ChainAdapter, db: Database, clock: Clock) -> ConflictDomain:
    """The strategy for the adapter's chain family: nonces or coins."""
    if isinstance(adapter, NonceSource):
        return AccountDomain(adapter, db, clock)
    if isinstance(adapter, CoinSource):
        return CoinDomain(adapter, db, clock)
    raise ConfigurationError(
        f"chain {adapter.name!r}: its adapter {type(adapter).__name__} implements neither NonceSource "
        f"(account chains) nor CoinSource (UTXO chains), so the engine cannot bind a conflict domain to a "
        f"submission")


class _Account(ChainAdapter, NonceSource, Protocol):
    pass


class _Utxo(ChainAdapter, CoinSource, Protocol):
    pass


class AccountDomain:
    kind = "nonce"

    def __init__(self, adapter: _Account, db: Database, clock: Clock) -> None:
        self.adapter, self.db, self.clock = adapter, db, clock
        self._seeded: set[str] = set()  # senders whose nonce row exists
        # per event loop and sender, the seeding in flight: the first submissions of a
        # sender, arriving together, share one look at the table and at most one read of
        # the chain's nonce, instead of each allocating, finding no row, and going again
        self._seeding: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[None]] = {}

    async def allocate(self, commit: Commit, sub_id: int, sender: str, request: dict[str, Any],
                       now: float) -> sa.Row[Any]:
        text = codec.dumps(request)
        if sender not in self._seeded:
            await self._seed(sender)
        (sub,) = await commit(chainstore.take_nonce(self.db.engine.dialect.name, sub_id, text, now))
        if sub is None:  # bound already (a run sharing the key), or no nonce row: the steps tell which
            (sub,) = await commit(lambda conn: chainstore.allocate_nonce_in_steps(conn, sub_id, text, now))
        return sub  # type: ignore[no-any-return]

    async def _seed(self, sender: str) -> None:
        key = (asyncio.get_running_loop(), sender)
        seeding = self._seeding.get(key)
        if seeding is None:
            seeding = self._seeding[key] = asyncio.ensure_future(self._seed_row(sender))
            seeding.add_done_callback(lambda _: self._seeding.pop(key, None))  # a failure is tried again
        await asyncio.shield(seeding)  # a caller cancelled leaves the others their seeding

    async def _seed_row(self, sender: str) -> None:
        """The sender's nonce row, made from the chain's pending nonce on first sight."""
        chain = self.adapter.name
        if not await self.db.aread(chainstore.has_nonces, chain, sender):
            seed = await self.adapter.pending_nonce(sender)
            await self.db.atx(chainstore.seed_nonces, chain, sender, seed)
        self._seeded.add(sender)

    async def bound(self, sub: sa.Row[Any]) -> int:
        return int(sub.nonce)

    async def used(self, subs: list[sa.Row[Any]], rpc: Rpc) -> dict[int, str]:
        latest: dict[str, int] = {}
        out = {}
        for sub in subs:
            if sub.sender not in latest:
                latest[sub.sender] = await rpc(self.adapter.latest_nonce(sub.sender))
            if latest[sub.sender] > int(sub.nonce):
                out[int(sub.id)] = f"nonce {int(sub.nonce)} was used by a transaction chainflow did not sign"
        return out

    async def abandon(self, sub: sa.Row[Any], guard: Guard) -> str | None:
        if sub.sender != self.adapter.sender():
            return None
        await fill_gap(self.db, self.clock, self.adapter, int(sub.nonce), guard)
        return "run ended before signing; nonce burned by a gap fill"

    async def fail_unsigned(self, commit: Commit, sub: sa.Row[Any], reason: str, guard: Guard) -> None:
        """The nonce is the intent's forever but no version can use it, so burn it, or
        every later nonce of the sender stays unmined.  A crash before the failure is
        recorded burns it again (the gap fill is found by its key)."""
        await fill_gap(self.db, self.clock, self.adapter, int(sub.nonce), guard)
        await commit(lambda conn: chainstore.mark_failed(conn, int(sub.id), reason, self.clock.time()))

    async def release_failed(self, head: int, rpc: Rpc) -> int:
        return 0  # a nonce used by a foreign transaction is used: nothing to give back


def select_offered(adapter: CoinSource, request: dict[str, Any], offered: chainstore.Offer) -> list[Coin]:
    """``adapter.select`` over the offered coins; its refusal ("insufficient funds")
    also says what the wallet holds that was not offered, which the adapter never sees:
    "coins hold 0" alone reads as an empty wallet when its coins are change waiting for
    a payout to be final."""
    try:
        return adapter.select(request, offered.free)
    except TxRejected as exc:
        note = offered.held_back()
        if not note:
            raise
        raise TxRejected(exc.reason + note, reverted=exc.reverted) from None


class CoinDomain:
    kind = "coins"

    def __init__(self, adapter: _Utxo, db: Database, clock: Clock) -> None:
        self.adapter, self.db, self.clock = adapter, db, clock

    async def allocate(self, commit: Commit, sub_id: int, sender: str, request: dict[str, Any],
                       now: float) -> sa.Row[Any]:
        text, chain = codec.dumps(request), self.adapter.name
        for _ in range(RESERVE_TRIES):
            coins = await self.adapter.coins(sender)
            (offered,) = await commit(lambda conn: chainstore.offer(conn, chain, coins))
            chosen = select_offered(self.adapter, request, offered)
            ok, sub = await commit(lambda conn: chainstore.reserve(conn, sub_id, chain, chosen, text, now),
                                   lambda conn: chainstore.get(conn, sub_id))
            if ok:
                return sub  # type: ignore[no-any-return]
        raise RuntimeError(f"coins for submission {sub_id} on {chain!r} were taken by other intents "
                           f"{RESERVE_TRIES} times in a row")

    async def bound(self, sub: sa.Row[Any]) -> list[str]:
        return await self.db.aread(chainstore.reservation_of, int(sub.id))

    async def used(self, subs: list[sa.Row[Any]], rpc: Rpc) -> dict[int, str]:
        out = {}
        for sub in subs:
            for outpoint in await self.db.aread(chainstore.reservation_of, int(sub.id)):
                taken = await self._taken(outpoint, rpc)
                if taken is not None:
                    out[int(sub.id)] = taken[1]
                    break
        return out

    async def _taken(self, outpoint: str, rpc: Rpc) -> tuple[str, str] | None:
        """The canonical transaction that keeps ``outpoint`` from every candidate, with
        the sentence failing the intent over it: a spend of it, or a conflict with the
        transaction creating it, which then can never exist (the change of a payout a
        reorg past its finality settled with another version: no candidate spending it
        can ever be mined, and the intent used to wait for it for ever)."""
        spender = await rpc(self.adapter.spender(outpoint))
        if spender is not None:
            return spender, f"reserved input {outpoint} was spent by {spender}, a transaction chainflow did not sign"
        rival = await rpc(self.adapter.conflicting(outpoint))
        if rival is not None:
            return rival, (f"reserved input {outpoint} can never exist: the transaction creating it conflicts with "
                           f"{rival}, in the chain")
        return None

    async def abandon(self, sub: sa.Row[Any], guard: Guard) -> str | None:
        await self.db.atx(chainstore.abandon_coins, int(sub.id),
                          "run ended before signing; its reserved coins were released", self.clock.time())
        return None

    async def fail_unsigned(self, commit: Commit, sub: sa.Row[Any], reason: str, guard: Guard) -> None:
        """The coins are free again in the transaction failing the intent
        (``chainstore.fail_unsigned``), as a batch's are."""
        await commit(lambda conn: chainstore.fail_unsigned(conn, int(sub.id), reason, self.clock.time()))

    async def release_failed(self, head: int, rpc: Rpc) -> int:
        """Coins of an intent failed by a foreign spend (or a coin that can never exist)
        go back only once that spend (or conflict) is as final as the intent asked its
        own payout to be: until then a reorg could drop it, and one of our candidates,
        still signed and valid, could be included after all.  A coin free again stays
        held for that reason."""
        freed = 0
        for sub in await self.db.aread(chainstore.held_by_failed, self.adapter.name):
            policy = finality.from_dict(json.loads(sub.finality))
            for outpoint in await self.db.aread(chainstore.reservation_of, int(sub.id)):
                taken = await self._taken(outpoint, rpc)
                if taken is None:
                    continue
                receipt = await rpc(self.adapter.receipt(taken[0]))
                if receipt is not None and finality.holds(policy, receipt.block_number, head, {}):
                    await self.db.atx(chainstore.release, int(sub.id))
                    freed += 1
                    break
        return freed


async def fill_gap(db: Database, clock: Clock, adapter: _Account, nonce: int, guard: Guard) -> None:
    """Burn ``nonce`` with a 0-value self-transfer so later nonces can be mined.

    ``guard`` is awaited right before the broadcast and raises when this process may
    no longer act: a run's ``hold_lease`` when signing failed in a step, the tracker's
    leadership check for a nonce orphaned by a run that ended."""
    sender = adapter.sender()
    request = await adapter.estimate(adapter.gap_filler(sender))
    now = clock.time()
    gap_id = await db.atx(chainstore.open_gap_fill, adapter.name, sender, nonce, codec.dumps(request), now)
    sub = await db.atx(chainstore.get, gap_id)
    if sub.state == SubmissionState.ALLOCATED:
        signed = await adapter.sign(request, nonce, None)
        await db.atx(chainstore.add_attempt, gap_id, adapter.name, signed, clock.time())
        sub = await db.atx(chainstore.get, gap_id)
    await guard()
    await broadcast_latest(db, clock, None, adapter, sub)
