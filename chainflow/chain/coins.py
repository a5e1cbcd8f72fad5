"""Coin health per UTXO chain: what ``chainflow coins`` shows, the twin of ``nonces``.

An operator asking "why is this payout waiting, where did the balance go" needs the
reserved coins with the intent that owns each (a lost or stuck reservation is the most
reported bug of payout services), beside what the wallet holds on chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from ..storage.database import Database
from . import chainstore
from .adapter import ChainAdapter, CoinSource


@dataclass
class Reserved:
    outpoint: str
    value: int  # smallest unit (satoshi)
    owner_key: str  # the idempotency key of the intent (or batch) holding it
    owner_state: str
    run_id: str | None
    batch: bool


@dataclass
class ChainCoins:
    chain: str
    sender: str | None = None
    reserved: list[Reserved] = field(default_factory=list)
    on_chain: int | None = None  # how many confirmed coins the wallet has, as the node reports them
    on_chain_value: int | None = None
    spendable: int | None = None  # of those, what new payouts can use (``chainstore.offer``)

    @property
    def reserved_value(self) -> int:
        return sum(r.value for r in self.reserved)


def snapshot(conn: sa.Connection) -> list[ChainCoins]:
    out: dict[str, ChainCoins] = {}
    for r in chainstore.coin_reservations(conn):
        out.setdefault(r.chain, ChainCoins(r.chain)).reserved.append(Reserved(
            r.outpoint, int(r.value), r.idempotency_key, r.state, r.run_id, r.batch_id == r.submission_id))
    return list(out.values())


async def report(db: Database, chains: dict[str, ChainAdapter]) -> list[ChainCoins]:
    """The database's reservations joined with each UTXO chain's own coin list."""
    rows = {c.chain: c for c in await db.aread(snapshot)}
    for name, adapter in chains.items():
        if not isinstance(adapter, CoinSource):
            continue
        row = rows.setdefault(name, ChainCoins(name))
        row.sender = adapter.sender()
        coins = await adapter.coins(row.sender)
        row.on_chain, row.on_chain_value = len(coins), sum(c.value for c in coins)
        row.spendable = sum(c.value for c in (await db.aread(chainstore.offer, name, coins)).free)
    return sorted(rows.values(), key=lambda c: c.chain)
