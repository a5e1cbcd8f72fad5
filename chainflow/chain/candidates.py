"""An intent's candidates: every signed version is kept, and only stored bytes are sent.

Whichever candidate the chain includes settles the intent (the tracker matches block
transactions against all of them); what is (re-)broadcast is the newest stored version,
or, when the node refuses that one, an earlier one the tracker picks (a replacement the
sender cannot fund leaves the version it can): nothing here ever signs.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from .. import metrics
from ..clock import Clock
from ..storage.database import Database
from . import chainstore
from .adapter import BroadcastOutcome, BroadcastResult, ChainAdapter, SignedTx
from .scope import RunScope

log = logging.getLogger("chainflow.submission")


async def broadcast_latest(db: Database, clock: Clock, ctx: RunScope | None, adapter: ChainAdapter,
                           sub: sa.Row[Any], signed: SignedTx | None = None) -> BroadcastResult | None:
    """(Re-)broadcast the newest signed bytes of a submission; never signs anything new.
    ``signed``: the version the caller has just committed, the newest, sent without
    reading it back."""
    newest: Any = signed
    if newest is None:
        if ctx is not None:  # in the run's group commit: many runs broadcasting share one read
            (attempts,) = await ctx.commit(lambda conn: chainstore.attempts_of(conn, sub.id))
        else:
            attempts = await db.aread(chainstore.attempts_of, sub.id)
        if not attempts:
            return None
        newest = attempts[-1]
    return await broadcast(db, clock, ctx, adapter, sub, newest)


async def broadcast(db: Database, clock: Clock, ctx: RunScope | None, adapter: ChainAdapter, sub: sa.Row[Any],
                    version: Any) -> BroadcastResult:
    """Send one stored version of a submission (a ``SignedTx`` or its ``cf_tx_attempts``
    row) as it is."""
    if ctx is not None:
        await ctx.hold_lease()  # a worker frozen past its lease leaves this to the new owner
    result = await adapter.broadcast(version.raw)
    metrics.inc("chainflow_broadcasts_total", chain=adapter.name, outcome=result.outcome.value)
    if result.outcome in (BroadcastOutcome.REJECTED, BroadcastOutcome.UNFUNDED):
        log.warning("node refused %s for submission %s: %s", version.tx_hash, sub.id, result.detail)
    # NONCE_TOO_LOW / SPENT may mean one of our own candidates is mined: the tracker decides.
    now = clock.time()
    op = chainstore.mark_broadcast(sub.id, now)
    if ctx is not None:
        await ctx.commit(op)
    else:
        await db.atx(op)
    return result
