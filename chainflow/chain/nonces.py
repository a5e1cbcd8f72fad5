"""Nonce health per (chain, sender): what ``chainflow nonces`` shows and what the
tracker repairs.

A nonce bound to a submission that will never sign (its run failed or was cancelled
between allocation and signing) would block every later nonce of the sender forever;
the tracker burns such nonces with a 0-value self-transfer (see docs/submission.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from ..states import SubmissionState
from ..storage.database import Database
from . import chainstore
from .adapter import ChainAdapter, NonceSource


@dataclass
class SenderNonces:
    chain: str
    sender: str
    next_nonce: int  # next one chainflow hands out
    chain_latest: int | None = None  # mined count on chain
    chain_pending: int | None = None
    in_flight: list[int] = field(default_factory=list)  # allocated, not yet mined
    gaps: list[int] = field(default_factory=list)  # allocated, can never sign: need a filler
    gap_fills: list[tuple[int, SubmissionState]] = field(default_factory=list)  # (nonce, state)


_UNMINED = (SubmissionState.ALLOCATED, SubmissionState.SIGNED, SubmissionState.BROADCAST)  # hold a nonce


def snapshot(conn: sa.Connection) -> list[SenderNonces]:
    out = []
    for n in chainstore.nonce_counters(conn):
        row = SenderNonces(n.chain, n.sender, int(n.next_nonce))
        for s in chainstore.nonces_in_use(conn, n.chain, n.sender):
            if s.gap_fill:
                row.gap_fills.append((int(s.nonce), SubmissionState(s.state)))
            elif s.state in _UNMINED:
                row.in_flight.append(int(s.nonce))
        row.gaps = [int(r.nonce) for r in chainstore.orphaned_allocations(conn, n.chain) if r.sender == n.sender]
        out.append(row)
    return out


async def report(db: Database, chains: dict[str, ChainAdapter]) -> list[SenderNonces]:
    """The database's view joined with each chain's own counts."""
    rows = await db.aread(snapshot)
    for row in rows:
        adapter = chains.get(row.chain)
        if isinstance(adapter, NonceSource):
            row.chain_latest = await adapter.latest_nonce(row.sender)
            row.chain_pending = await adapter.pending_nonce(row.sender)
    return rows
