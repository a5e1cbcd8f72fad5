"""The confirmation tracker: one head follower per chain, settling submissions.

Cost per new head is constant in the number of pending transactions: the block's
transaction hashes are matched against stored attempts with one indexed query, and
receipts are fetched only for matches.  Finality is then checked only for included
submissions (a handful per block), never for everything pending.

The same loop is the reorg monitor: a parent-hash mismatch, or a changed hash at a
stored height, is walked back to the fork point; included transactions go back to
pending, and a transaction whose step already completed on its finality assumption
has that step rolled back (see ``reorg.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa

from .. import metrics
from ..clock import Clock
from ..events import Events
from ..lease import valid_for
from ..lograte import FailureLog
from ..storage import codec
from ..storage.database import Database
from . import chainstore, finality
from .adapter import BroadcastOutcome, BroadcastResult, ChainAdapter, Header, Receipt, TxRejected
from .batcher import Batcher
from .candidates import broadcast
from .domain import domain_for
from .tracker_config import TrackerConfig

log = logging.getLogger("chainflow.tracker")
T = TypeVar("T")
# the node will not take these bytes, however long they wait; an earlier version of the
# same intent may still be taken (it is cheaper, or within a rule the newest breaks)
_REFUSED = (BroadcastOutcome.UNFUNDED, BroadcastOutcome.REJECTED)
# the node holds the bytes, or may: the same version is worth sending again
_HELD = (BroadcastOutcome.ACCEPTED, BroadcastOutcome.ALREADY_KNOWN, BroadcastOutcome.UNKNOWN)


def _nothing(conn: sa.Connection) -> None:
    """The write of a renewal on its own: the lease itself (``Tracker._commit``)."""


class _Deposed(Exception):
    """Another process may lead the chain now: this iteration must not act further."""


@dataclass
class HeadStats:
    """What one iteration did; the benchmark reads ``rpc_calls``."""

    new_blocks: int = 0
    matched: int = 0
    settled: int = 0
    reorg_depth: int = 0
    rpc_calls: int = 0
    rebroadcasts: int = 0
    bumps: int = 0
    batches: int = 0
    behind: int = 0  # blocks the node's head is past what this iteration took


class Tracker:
    def __init__(self, db: Database, clock: Clock, adapter: ChainAdapter, owner: str,
                 config: TrackerConfig | None = None, events: Events | None = None,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.db, self.clock = db, clock
        # called once a head's commit has woken runs (submissions final, a reorg's
        # rollbacks): the worker of this process claims them now, not at its next poll
        self._wake = wake
        self.events = events or Events()
        self.adapter = adapter
        self.chain = adapter.name
        self.domain = domain_for(adapter, db, clock)
        self._coins = self.domain.kind == "coins"  # reservations to record as spent and to forget
        self.owner = owner
        self.config = config or TrackerConfig()
        self._stats = HeadStats()
        self._tip: Header | None = None  # cached newest canonical header while we lead
        self._failures = FailureLog(log, f"tracker for {self.chain}")
        self._lease = f"tracker:{self.chain}"
        self._ttl = self.config.leadership_ttl
        self._lead_until = -math.inf  # time.monotonic() until which our leadership is proven
        # the node's highest head seen, and when (engine clock) it last rose: the stall alert
        self._highest = -1
        self._rose_at = clock.time()
        self._stalled = False
        # intent -> the head its conflict domain was first seen used with no receipt of ours
        self._used_since: dict[int, int] = {}
        # intent -> the block a candidate of it was seen in while the node had no receipt
        # for it: proof enough that its conflict domain is not used by a foreign transaction
        self._seen_in: dict[int, str] = {}
        # intent whose newest version the node refuses -> how many versions back from the
        # newest the next earlier one to send is: one a round, newest first, kept while
        # the node holds it
        self._earlier: dict[int, int] = {}
        policy = self.config.batching.get(self.chain)
        self.batcher = None if policy is None else Batcher(db, clock, adapter, policy, self._as_leader, self._rpc)

    async def _rpc(self, call: Any) -> Any:
        self._stats.rpc_calls += 1
        return await call

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            stats = None
            try:
                stats = await self.iteration()
            except Exception as exc:
                self._failures.failed(exc, "failed an iteration; retrying")
            else:
                self._failures.recovered()
            if stats is not None and stats.behind:
                await asyncio.sleep(0)  # catching up: the next batch of blocks at once
                continue
            self._watch_stall()
            try:
                await asyncio.wait_for(stop.wait(), self.config.poll_interval)
            except TimeoutError:
                pass

    async def iteration(self) -> HeadStats | None:
        """``step`` if we lead, what ``run`` does every poll interval; None when another
        process leads.  Each step's write transaction renews the leadership lease
        (``_commit``), so a transaction of its own renews it only when the last renewal
        is more than half spent: at first contact, or after a pause or a failed step."""
        if self._lead_until - time.monotonic() > valid_for(self._ttl) / 2 or await self._lead():
            try:
                return await self.step()
            except chainstore.NotLeader:
                pass  # another process took over since the last renewal: the write that found out rolled back
        self._tip = None  # another process leads: our cached tip goes stale
        return None

    async def _lead(self) -> bool:
        """Renew (or take) the leadership lease in a transaction of its own; while it
        holds, ``_as_leader`` answers without the database."""
        try:
            await self._commit(_nothing)
        except (chainstore.NotLeader, sa.exc.IntegrityError):  # or it created the lease row first
            return False
        return True

    async def _commit(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` in one write transaction that renews (or takes) the leadership lease
        first: the head's writes commit only if this process leads as they do, and a
        steady tracker spends no transaction of its own on the renewal.  Raises
        ``chainstore.NotLeader`` (nothing written) when another process leads.  The
        lease is proven on the monotonic clock from when the renewal was sent."""
        sent = time.monotonic()
        try:
            result = await self.db.atx(chainstore.as_leader, self._lease, self.owner, self.clock.time(), self._ttl,
                                       fn, *args)
        except chainstore.NotLeader:
            self._lead_until = -math.inf
            raise
        self._lead_until = sent + valid_for(self._ttl)
        return result

    async def _as_leader(self) -> None:
        """Raise ``_Deposed`` unless this process still leads the chain: a leader frozen
        past its lease (SIGSTOP, a stalled loop) must not re-broadcast, bump or fill a
        gap once another process may have taken over, so past the deadline the database
        decides.  Called right before each such action."""
        if time.monotonic() >= self._lead_until and not await self._lead():
            raise _Deposed(self.chain)

    async def step(self) -> HeadStats:
        """One iteration: follow the head, detect reorgs, match, settle, unstick.

        Steady state is one read and one write transaction per head, and RPC calls
        that depend only on the new blocks and on our own matches in them."""
        self._stats = stats = HeadStats()
        head = await self._rpc(self.adapter.head())
        self._saw(head.number)
        tip = self._tip or await self.db.aread(chainstore.header_tip, self.chain)
        if tip is None:
            tip = await self._base(max(0, head.number - self.config.start_depth), head.number)
        head = await self._within_reach(head, tip)
        new = [] if await self._behind(head, tip) else await self._new_headers(head, tip)
        if new is None:
            fork = await self._find_fork(head, tip)
            await self._reorg(fork, head)
            # a reorg reaching below every stored header orphans them all: the window
            # starts again from the node's header at the fork
            tip = await self.db.aread(chainstore.header_tip, self.chain)
            if tip is None:
                tip = await self._base(fork, head.number)
            new = await self._new_headers(head, tip) or []
            self._wake()
        # decide at the newest header chained onto the stored window, never at the node's
        # word alone: a height it could not give (a lagging backend behind a load
        # balancer) ends this iteration's reach below its head
        head = new[-1] if new else tip
        block_hashes = {h.hash: await self._rpc(self.adapter.block_tx_hashes(h.hash)) for h in new}
        wanted = [tx for hashes in block_hashes.values() for tx in hashes]
        view = await self.db.aread(chainstore.head_view, self.chain, wanted, head.number - self.config.rebroadcast_blocks,
                                    self.config.stuck_batch)
        receipts: list[tuple[int, Receipt]] = []
        # concurrently: an adapter can then fetch a full block's worth in a few requests
        fetched = await asyncio.gather(*(self._rpc(self.adapter.receipt(tx_hash)) for _, tx_hash, _ in view.matches))
        for (sub_id, tx_hash, policy), receipt in zip(view.matches, fetched):
            if receipt is not None and receipt.block_hash in block_hashes:
                self._seen_in.pop(sub_id, None)
                for member, member_policy, member_receipt in self._with_members(sub_id, policy, receipt, view.members):
                    receipts.append((member, member_receipt))
                    view.included.append((member, member_policy, receipt.block_number))
            else:  # in the block, and no receipt yet: the node's index lags its blocks
                self._seen_in[sub_id] = next(b for b, hashes in block_hashes.items() if tx_hash in hashes)
        ready = await self._ready(view.included, head.number)
        await self._commit(chainstore.commit_head, self.chain, new, receipts, ready, head.number,
                           keep_from(head.number, self.config.window, view.included), self.clock.time(), self._coins)
        self._tip = new[-1] if new else tip
        if ready:
            self._wake()
        metrics.set_gauge("chainflow_chain_head_lag_blocks", head.number - self._tip.number, chain=self.chain)
        stats.new_blocks, stats.matched, stats.settled = len(new), len(receipts), len(ready)
        # read before this head's receipts were stored: what was just matched is not stuck
        settled = {sub_id for sub_id, _ in receipts}
        for sub_id in settled:
            self._earlier.pop(sub_id, None)
        stuck = [sub for sub in view.stuck if int(sub.id) not in settled]
        try:
            if stuck:
                await self._unstick(stuck, head.number)
            if view.orphaned:
                await self._abandon(view.orphaned)
            if new:
                await self.domain.release_failed(head.number, self._rpc)
            if self.batcher is not None:
                stats.batches = await self.batcher.step()
        except _Deposed:
            log.warning("tracker for %s lost its leadership mid-iteration; leaving the rest to the leader",
                        self.chain)
        return stats

    def _with_members(self, sub_id: int, policy: str, receipt: Receipt,
                      members: dict[int, list[tuple[int, str]]]) -> list[tuple[int, str, Receipt]]:
        """A matched submission's receipt, and for a batch each member's own (its output),
        so every member is included and settles under its own finality policy."""
        out = [(sub_id, policy, receipt)]
        if sub_id in members:
            builder: Any = self.adapter
            out += [(member, member_policy, builder.member_receipt(receipt, index))
                    for index, (member, member_policy) in enumerate(members[sub_id])]
        return out

    async def _base(self, number: int, head: int) -> Header:
        """Store the node's header at ``number`` as the bottom of an empty window.

        Submissions broadcast before the tracker first looked start their re-broadcast
        clock at ``head``, not at the base: a fresh tracker starting ``start_depth``
        below the head would otherwise find every pending one overdue and fee-bump
        them all at once."""
        base = await self._rpc(self.adapter.header_at(number))
        await self._commit(chainstore.commit_head, self.chain, [base], [], [], head, None, self.clock.time(),
                           self._coins)
        return base

    async def _within_reach(self, head: Header, tip: Header) -> Header:
        """The head this iteration takes: the node's, or when it is more than
        ``catch_up_blocks`` past ``tip`` the header that many above it.  Everything this
        iteration decides (matches, confirmations, what is overdue) then rests on blocks
        it has checked chain onto the stored window."""
        reach = tip.number + self.config.catch_up_blocks
        if head.number <= reach:
            return head
        target = await self._rpc(self.adapter.header_at(reach))
        if target is None:
            return head  # the node's chain shrank meanwhile: a reorg the full head shows
        self._stats.behind = head.number - reach
        return target

    async def _behind(self, head: Header, tip: Header) -> bool:
        """Whether the node's head is a block below the stored tip that the window holds:
        the node answers from behind (a backend lagging behind a load balancer), which
        orphans nothing.  Only another hash at a stored height proves a reorg, and a
        node on a shorter branch shows one as soon as it has a block at such a height."""
        if head.number >= tip.number:
            return False
        stored = await self.db.aread(chainstore.header_at, self.chain, head.number)
        return stored is not None and stored.hash == head.hash

    async def _new_headers(self, head: Header, tip: Header) -> list[Header] | None:
        """Headers above ``tip`` up to ``head``, or None when they do not chain onto it."""
        if head.number < tip.number or (head.number == tip.number and head.hash != tip.hash):
            return None
        new: list[Header] = []
        for number in range(tip.number + 1, head.number + 1):
            h = head if number == head.number else await self._rpc(self.adapter.header_at(number))
            if h is None:
                break
            new.append(h)
        previous = tip.hash
        for h in new:
            if h.parent_hash != previous:
                return None
            previous = h.hash
        return new

    async def _ready(self, included: list[tuple[int, str, int]], head: int) -> list[int]:
        """Included submissions whose finality policy holds at ``head``."""
        if not included:
            return []
        policies = {sub_id: finality.from_dict(json.loads(policy)) for sub_id, policy, _ in included}
        tags: dict[str, int | None] = {}
        for kind in {json.loads(p)["kind"] for _, p, _ in included} & {"finalized", "safe"}:
            tags[kind] = await self._rpc(self.adapter.tagged_number(kind))
        return [sub_id for sub_id, _, number in included if finality.holds(policies[sub_id], number, head, tags)]

    async def _find_fork(self, head: Header, tip: Header) -> int:
        """Height of the last block our stored window shares with the node's chain."""
        self._tip = None
        low = await self.db.aread(chainstore.lowest_header, self.chain) or 0
        number = min(tip.number, head.number)
        while number >= low:
            stored = await self.db.aread(chainstore.header_at, self.chain, number)
            canonical = head if number == head.number else await self._rpc(self.adapter.header_at(number))
            if stored is None or canonical is None or stored.hash == canonical.hash:
                return number
            number -= 1
        return low - 1

    async def _reorg(self, fork: int, head: Header) -> None:
        now = self.clock.time()
        new_hashes = []
        for number in range(fork + 1, head.number + 1):
            h = head if number == head.number else await self._rpc(self.adapter.header_at(number))
            if h is not None:
                new_hashes.append(h.hash)
        depth = await self._commit(chainstore.record_reorg, self.chain, fork, new_hashes, now)
        self._stats.reorg_depth = depth
        if depth:
            self.events.emit("reorg_detected", chain=self.chain, depth=depth, status=f"fork at block {fork}")

    async def _unstick(self, stuck: list[Any], head: int) -> None:
        """Re-broadcast what the node lost; bump fees on what it will not mine."""
        cfg = self.config
        used = await self.domain.used(stuck, self._rpc)
        for sub in stuck:
            if sub.id in used:
                self._earlier.pop(int(sub.id), None)
                await self._resolve_spent(sub, used[sub.id], head)
                continue
            self._used_since.pop(int(sub.id), None)  # a use a reorg took back starts over
            attempts = await self.db.aread(chainstore.attempts_of, sub.id)
            pending = await self._rpc(self.adapter.in_mempool(attempts[-1].tx_hash))
            if pending:
                self._earlier.pop(int(sub.id), None)  # the node took the newest after all
                if head - int(sub.last_broadcast_block) < cfg.bump_blocks:
                    continue
                await self._bump(sub, attempts)
            else:
                result = await self._send(sub, attempts[-1])
                if result.outcome in _REFUSED:
                    # refused for a reason a re-broadcast cannot change (a gas limit above the
                    # block's, a balance below its cost): someone must act, and its nonce
                    # holds the sender's next; meanwhile an earlier version may do
                    earlier = "; its earlier versions are sent in turn" if len(attempts) > 1 else ""
                    await self._stuck(sub, f"the node refuses it: {result.detail}{earlier}")
                    await self._send_earlier(sub, attempts)
                else:
                    self._earlier.pop(int(sub.id), None)
                    # the node dropped it as underpriced (base fee rose above its fee cap): only
                    # a same-nonce replacement with higher fees can get it mined
                    if result.outcome is BroadcastOutcome.UNDERPRICED:
                        await self._bump(sub, attempts)
            await self.db.atx(chainstore.touch, sub.id, head)

    async def _send(self, sub: Any, version: Any) -> BroadcastResult:
        """Re-send one stored version, as the leader."""
        await self._as_leader()
        result = await broadcast(self.db, self.clock, None, self.adapter, sub, version)
        self._stats.rpc_calls += 1
        self._stats.rebroadcasts += 1
        return result

    async def _send_earlier(self, sub: Any, attempts: list[Any]) -> None:
        """The node refuses the newest version: send an earlier one, all signed and stored
        over the same domain, so nothing new is signed.  A bump the sender cannot fund
        must not lose the version it can: once the market allows it, that one is mined.
        One a round, newest (closest to the market) first, and the same one again while
        the node holds it; the newest keeps being offered first, so a top-up lets it,
        or a bump from it, through."""
        if len(attempts) < 2:
            return
        back = self._earlier.get(int(sub.id), 1)
        result = await self._send(sub, attempts[-1 - back])
        if result.outcome not in _HELD:
            back = back % (len(attempts) - 1) + 1
        self._earlier[int(sub.id)] = back

    async def _abandon(self, orphaned: list[Any]) -> None:
        """Free the conflict domains of intents whose runs ended between allocation and
        signing: burn the nonce (account chains), release the coins (UTXO chains)."""
        for sub in orphaned:
            reason = await self.domain.abandon(sub, self._as_leader)
            if reason is not None:
                await self.db.atx(chainstore.mark_abandoned, sub.id, reason, self.clock.time())

    async def _resolve_spent(self, sub: Any, what: str, head: int) -> None:
        """The intent's conflict domain is used on chain: by one of our candidates (a
        missed match) or by a foreign transaction, which fails the intent (as does a
        reserved coin that can never exist, ``CoinDomain.used``), ``what`` saying why.

        Foreign only once no candidate has had a receipt for ``rebroadcast_blocks`` heads
        (at least one more) since the use was first seen, and the use is as final, from
        that head, as the intent asked its own transaction to be: a node answering from
        behind (a receipt not indexed yet) must not fail a payment that is mined, and
        until then a reorg could take the foreign use back and include ours after all."""
        for tx_hash in await self.db.aread(chainstore.candidate_hashes, sub.id):
            receipt = await self._rpc(self.adapter.receipt(tx_hash))
            if receipt is not None:
                self._used_since.pop(int(sub.id), None)
                self._seen_in.pop(int(sub.id), None)
                if await self._on_our_chain(receipt):
                    members = await self.db.aread(chainstore.members_of, [int(sub.id)])
                    found = self._with_members(int(sub.id), sub.finality, receipt, members)
                    await self.db.atx(chainstore.store_receipts, [(m, r) for m, _, r in found], self.clock.time())
                return  # mined in a block we have not stored yet: the next heads will tell
        block = self._seen_in.get(int(sub.id))
        if block is not None and await self.db.aread(chainstore.is_canonical, self.chain, block):
            return  # one of ours is in a block of the chain: its receipt is late, not missing
        seen = self._used_since.setdefault(int(sub.id), head)
        patience = max(1, self.config.rebroadcast_blocks)
        if head - seen < patience or not await self._ready([(int(sub.id), sub.finality, seen)], head):
            return
        del self._used_since[int(sub.id)]
        self._seen_in.pop(int(sub.id), None)
        await self.db.atx(chainstore.fail_foreign, sub.id, what, self.clock.time())

    async def _on_our_chain(self, receipt: Receipt) -> bool:
        """Whether ``receipt``'s block is canonical: one the stored window holds, or,
        below the window, the node's block at that height.  A match missed long ago (a
        node that lied about the receipt while the block passed, a tracker that caught
        up past it) is otherwise never settled: its block is no longer stored."""
        if await self.db.atx(chainstore.is_canonical, self.chain, receipt.block_hash):
            return True
        lowest = await self.db.aread(chainstore.lowest_header, self.chain)
        if lowest is None or receipt.block_number >= lowest:
            return False  # a block the stored window does not hold (yet): the next heads tell
        canonical = await self._rpc(self.adapter.header_at(receipt.block_number))
        return canonical is not None and canonical.hash == receipt.block_hash

    async def _bump(self, sub: Any, attempts: list[Any]) -> None:
        """Replace with higher fees, until the bump count or the adapter's fee budget
        runs out: then the submission is flagged stuck (an alert, not a failure: the
        last version may still be mined) and re-broadcast as it is."""
        if len(attempts) > self.config.max_bumps:
            await self._stuck(sub, f"{self.config.max_bumps} fee bump(s) made, TrackerConfig.max_bumps reached")
            return
        await self._as_leader()
        # the same domain as every earlier version: the same nonce, or all the same coins
        request, bound = codec.loads(sub.request), await self.domain.bound(sub)
        try:
            bumped = self.adapter.bump_fees(json.loads(attempts[-1].fees), self.config.bump_factor)
            # at least the node's replacement rule, and at least what the market asks now
            market = (await self._rpc(self.adapter.sign(request, bound, None))).fees
            fees = {k: max(v, market.get(k, 0)) for k, v in bumped.items()}
            signed = await self._rpc(self.adapter.sign(request, bound, fees))
        except TxRejected as exc:
            await self._stuck(sub, exc.reason)
            return
        if signed.tx_hash in {a.tx_hash for a in attempts}:
            # higher fees that sign to the same bytes: nothing is left to raise them from
            # (a payment without change already gives the fee all its inputs hold over)
            await self._stuck(sub, f"a replacement at fees {fees} is the very transaction {signed.tx_hash}: "
                                   f"no fee left to raise")
            return
        await self.db.atx(chainstore.add_attempt, sub.id, self.chain, signed, self.clock.time())
        await self._as_leader()
        await broadcast(self.db, self.clock, None, self.adapter, sub, signed)
        self._stats.rpc_calls += 1
        self._stats.bumps += 1
        metrics.inc("chainflow_fee_bumps_total", chain=self.chain)


    async def _stuck(self, sub: Any, reason: str) -> None:
        if await self.db.atx(chainstore.mark_stuck, sub.id, self.clock.time()):
            hashes = await self.db.aread(chainstore.candidate_hashes, sub.id)
            self.events.emit("submission_stuck", run_id=sub.run_id, step=sub.step, chain=self.chain,
                             tx_hash=hashes[-1] if hashes else None,
                             error=f"{reason}; it keeps being re-broadcast as it is")

    def _saw(self, number: int) -> None:
        metrics.set_gauge("chainflow_chain_head_height", number, chain=self.chain)
        if number > self._highest:
            self._highest, self._rose_at = number, self.clock.time()
            if self._stalled:
                self._stalled = False
                self.events.emit("chain_resumed", chain=self.chain, status=f"head {number}")

    def _watch_stall(self) -> None:
        """Alert once when the node's head has not risen (or could not be read) for
        ``TrackerConfig.stall_after`` seconds, and once when it rises again: a stalled
        node or chain holds every confirmation wait, silently."""
        limit = self.config.stall_after
        if limit is None or self._stalled:
            return
        quiet = self.clock.time() - self._rose_at
        if quiet >= limit:
            self._stalled = True
            self.events.emit("chain_stalled", chain=self.chain, duration=quiet,
                             status=f"head {self._highest}" if self._highest >= 0 else "head never read")


def keep_from(head: int, window: int, included: list[tuple[int, str, int]]) -> int:
    """The lowest header height the tracker keeps: ``window`` below the head, and deeper
    under any submission still waiting for its policy on an older block (a ``Finalized``
    or ``Safe`` tag lagging more than the window, or a count journaled under a deeper
    window).  Without its header a reorg of that block is invisible, and the submission
    would go on to complete on a block no longer in the chain.  ``included`` is what
    ``chainstore.head_view`` already read for this head: no query of its own."""
    return min([head - window, *(number for _, _, number in included)])
