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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import codec, finality, headers, metrics, nonces, reorg, store
from .adapter import ChainAdapter, Header, Receipt
from .schema import submissions, tx_attempts
from .submission import broadcast_latest, event_name, fill_gap
from .tracker_config import TrackerConfig

if TYPE_CHECKING:
    from .app import Chainflow

log = logging.getLogger("chainflow.tracker")

OPEN = ("signed", "broadcast")


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
    notes: list[str] = field(default_factory=list)


class Tracker:
    def __init__(self, app: Chainflow, adapter: ChainAdapter, owner: str, config: TrackerConfig | None = None) -> None:
        self.app = app
        self.adapter = adapter
        self.chain = adapter.name
        self.owner = owner
        self.config = config or TrackerConfig()
        self._stats = HeadStats()

    async def _rpc(self, call: Any) -> Any:
        self._stats.rpc_calls += 1
        return await call

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self.app.adb(headers.lead, f"tracker:{self.chain}", self.owner, self.app.clock.time(),
                                      max(5.0, self.config.poll_interval * 10)):
                    await self.step()
            except sa.exc.IntegrityError:
                pass  # another process created the leadership row first
            except Exception:
                log.exception("tracker for %s failed an iteration; retrying", self.chain)
            try:
                await asyncio.wait_for(stop.wait(), self.config.poll_interval)
            except TimeoutError:
                pass

    async def step(self) -> HeadStats:
        """One iteration: follow the head, detect reorgs, match, settle, unstick."""
        self._stats = stats = HeadStats()
        head = await self._rpc(self.adapter.head())
        tip = await self.app.adb(headers.tip, self.chain)
        if tip is None:
            start = max(0, head.number - self.config.start_depth)
            tip = await self._rpc(self.adapter.header_at(start))
            await self._accept([tip])
        fork = await self._find_fork(head, tip)
        if fork is not None:
            await self._reorg(fork, head)
            tip = await self.app.adb(headers.tip, self.chain)
            assert tip is not None
        new = []
        for number in range(tip.number + 1, head.number + 1):
            h = head if number == head.number else await self._rpc(self.adapter.header_at(number))
            if h is None:
                break
            new.append(h)
        await self._accept(new)
        await self._settle(head.number)
        await self._unstick(head.number)
        await self._fill_gaps()
        await self.app.adb(headers.prune, self.chain, head.number - self.config.window)
        return stats

    async def _find_fork(self, head: Header, tip: Header) -> int | None:
        """Height of the last common block when our stored tip is no longer canonical."""
        if head.number >= tip.number:
            probe = head if head.number == tip.number else await self._rpc(self.adapter.header_at(tip.number))
        else:
            probe = await self._rpc(self.adapter.header_at(tip.number))
        if probe is not None and probe.hash == tip.hash:
            return None
        low = await self.app.adb(headers.lowest, self.chain) or 0
        number = min(tip.number, head.number) if probe is None else tip.number - 1
        while number >= low:
            stored = await self.app.adb(headers.at, self.chain, number)
            canonical = await self._rpc(self.adapter.header_at(number))
            if stored is None or canonical is None or stored.hash == canonical.hash:
                return number
            number -= 1
        return low - 1

    async def _reorg(self, fork: int, head: Header) -> None:
        now = self.app.clock.time()
        new_hashes = []
        for number in range(fork + 1, head.number + 1):
            h = head if number == head.number else await self._rpc(self.adapter.header_at(number))
            if h is not None:
                new_hashes.append(h.hash)
        depth = await self.app.adb(reorg.record, self.chain, fork, new_hashes, now)
        self._stats.reorg_depth = depth
        log.warning("reorg on %s: %d block(s) orphaned above %d", self.chain, depth, fork)

    async def _accept(self, new: list[Header]) -> None:
        """Store new canonical headers and match their transactions with our attempts."""
        for h in new:
            hashes = await self._rpc(self.adapter.block_tx_hashes(h.hash))
            matches = await self.app.adb(_match, self.chain, hashes) if hashes else []
            receipts: list[tuple[int, Receipt]] = []
            for sub_id, tx_hash in matches:
                receipt = await self._rpc(self.adapter.receipt(tx_hash))
                if receipt is not None and receipt.block_hash == h.hash:
                    receipts.append((sub_id, receipt))
            await self.app.adb(_store_block, self.chain, h, receipts, self.app.clock.time())
            self._stats.new_blocks += 1
            self._stats.matched += len(receipts)

    async def _settle(self, head: int) -> None:
        """Mark included submissions final once their policy holds, and wake their runs."""
        included = await self.app.adb(_included, self.chain)
        if not included:
            return
        tags: dict[str, int | None] = {}
        for kind in {json.loads(r.finality)["kind"] for r in included} & {"finalized", "safe"}:
            tags[kind] = await self._rpc(self.adapter.tagged_number(kind))
        ready = [
            r.id for r in included
            if finality.holds(finality.from_dict(json.loads(r.finality)), int(r.block_number), head, tags)
        ]
        if ready:
            await self.app.adb(_finalise, ready, self.app.clock.time())
            self._stats.settled += len(ready)

    async def _unstick(self, head: int) -> None:
        """Re-broadcast what the node lost; bump fees on what it will not mine."""
        cfg = self.config
        stuck = await self.app.adb(_stuck, self.chain, head - cfg.rebroadcast_blocks, cfg.stuck_batch)
        latest: dict[str, int] = {}
        for sub in stuck:
            if sub.sender not in latest:
                latest[sub.sender] = await self._rpc(self.adapter.latest_nonce(sub.sender))
            if latest[sub.sender] > int(sub.nonce):
                await self._resolve_spent(sub)
                continue
            attempts = await self.app.adb(lambda c, s=sub.id: list(c.execute(
                sa.select(tx_attempts).where(tx_attempts.c.submission_id == s).order_by(tx_attempts.c.id))))
            pending = await self._rpc(self.adapter.in_mempool(attempts[-1].tx_hash))
            if not pending:
                await broadcast_latest(self.app, None, self.adapter, sub)
                self._stats.rpc_calls += 1
                self._stats.rebroadcasts += 1
            elif head - int(sub.last_broadcast_block) >= cfg.bump_blocks and len(attempts) <= cfg.max_bumps:
                await self._bump(sub, attempts[-1])
            else:
                continue
            await self.app.adb(_touch, sub.id, head)

    async def _fill_gaps(self) -> None:
        """Burn nonces whose runs ended between allocation and signing."""
        for sub in await self.app.adb(nonces.orphaned_allocations, self.chain):
            if sub.sender != self.adapter.sender():
                continue
            await fill_gap(self.app, None, self.adapter, int(sub.nonce))
            await self.app.adb(nonces.mark_abandoned, sub.id, self.app.clock.time())

    async def _resolve_spent(self, sub: Any) -> None:
        """Our nonce is used on chain: by one of our attempts (missed match) or by a foreign tx."""
        attempts = await self.app.adb(lambda c: list(c.execute(
            sa.select(tx_attempts.c.tx_hash).where(tx_attempts.c.submission_id == sub.id))))
        for (tx_hash,) in attempts:
            receipt = await self._rpc(self.adapter.receipt(tx_hash))
            if receipt is not None:
                canonical = await self.app.adb(headers.is_canonical, self.chain, receipt.block_hash)
                if canonical:
                    await self.app.adb(_store_block, self.chain, None, [(sub.id, receipt)], self.app.clock.time())
                return  # mined in a block we have not stored yet: the next heads will tell
        await self.app.adb(_fail_foreign, sub.id, int(sub.nonce), self.app.clock.time())

    async def _bump(self, sub: Any, last: Any) -> None:
        fees = self.adapter.bump_fees(json.loads(last.fees), self.config.bump_factor)
        signed = await self._rpc(self.adapter.sign(codec.loads(sub.request), int(sub.nonce), fees))
        from . import txstore

        await self.app.adb(txstore.add_attempt, sub.id, self.chain, signed, self.app.clock.time())
        await broadcast_latest(self.app, None, self.adapter, sub)
        self._stats.rpc_calls += 1
        self._stats.bumps += 1
        metrics.inc("chainflow_fee_bumps_total", chain=self.chain)


# --- SQL used only by the tracker ---------------------------------------------------


def _match(conn: sa.Connection, chain: str, hashes: list[str]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for i in range(0, len(hashes), 500):
        chunk = [h.lower() for h in hashes[i : i + 500]]
        out.extend(
            (int(r.submission_id), r.tx_hash)
            for r in conn.execute(
                sa.select(tx_attempts.c.submission_id, tx_attempts.c.tx_hash)
                .join(submissions, submissions.c.id == tx_attempts.c.submission_id)
                .where(tx_attempts.c.chain == chain, tx_attempts.c.tx_hash.in_(chunk),
                       submissions.c.state.in_(OPEN))
            )
        )
    return out


def _store_block(conn: sa.Connection, chain: str, h: Header | None, receipts: list[tuple[int, Receipt]],
                 now: float) -> None:
    if h is not None:
        headers.add(conn, chain, h)
    for sub_id, r in receipts:
        conn.execute(
            submissions.update()
            .where(submissions.c.id == sub_id, submissions.c.state.in_(OPEN))
            .values(state="included", tx_hash=r.tx_hash, block_number=r.block_number, block_hash=r.block_hash,
                    receipt=codec.dumps(_receipt_dict(r)), updated_at=now)
        )


def _receipt_dict(r: Receipt) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(r)


def _included(conn: sa.Connection, chain: str) -> list[sa.Row[Any]]:
    return list(conn.execute(
        sa.select(submissions.c.id, submissions.c.finality, submissions.c.block_number)
        .where(submissions.c.chain == chain, submissions.c.state == "included")
    ))


def _finalise(conn: sa.Connection, ids: list[int], now: float) -> None:
    rows = list(conn.execute(sa.select(submissions.c.id, submissions.c.run_id).where(submissions.c.id.in_(ids))))
    conn.execute(submissions.update().where(submissions.c.id.in_(ids), submissions.c.state == "included")
                 .values(state="final", updated_at=now))
    for r in rows:
        if r.run_id:
            store.insert_signal(conn, r.run_id, event_name(int(r.id)), "null", now)


def _stuck(conn: sa.Connection, chain: str, older_than: int, limit: int) -> list[sa.Row[Any]]:
    # last_broadcast_block NULL: broadcast but not yet seen by the tracker; start its clock
    conn.execute(
        submissions.update()
        .where(submissions.c.chain == chain, submissions.c.state.in_(OPEN),
               submissions.c.last_broadcast_block.is_(None))
        .values(last_broadcast_block=older_than + 1)
    )
    return list(conn.execute(
        sa.select(submissions)
        .where(submissions.c.chain == chain, submissions.c.state.in_(OPEN),
               submissions.c.last_broadcast_block <= older_than)
        .order_by(submissions.c.nonce)
        .limit(limit)
    ))


def _touch(conn: sa.Connection, sub_id: int, head: int) -> None:
    conn.execute(submissions.update().where(submissions.c.id == sub_id).values(last_broadcast_block=head))


def _fail_foreign(conn: sa.Connection, sub_id: int, nonce: int, now: float) -> None:
    conn.execute(
        submissions.update().where(submissions.c.id == sub_id, submissions.c.state.in_(OPEN))
        .values(state="failed", error=f"nonce {nonce} was used by a transaction chainflow did not sign",
                updated_at=now)
    )
    row = conn.execute(sa.select(submissions.c.run_id).where(submissions.c.id == sub_id)).first()
    if row and row.run_id:
        store.insert_signal(conn, row.run_id, event_name(sub_id), "null", now)
