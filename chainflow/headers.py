"""The tracker's window of canonical headers, per chain.

Kept deeper than the largest finality depth in use so a reorg can be walked back to
its fork point from stored data, and so a restart (or a reorg while every worker was
down) is detected by comparing stored hashes with the node's.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .adapter import Header
from .schema import headers, leaders


def tip(conn: sa.Connection, chain: str) -> Header | None:
    row = conn.execute(
        sa.select(headers)
        .where(headers.c.chain == chain, headers.c.orphaned.is_(sa.false()))
        .order_by(headers.c.number.desc())
        .limit(1)
    ).first()
    return _header(row) if row else None


def at(conn: sa.Connection, chain: str, number: int) -> Header | None:
    row = conn.execute(
        sa.select(headers).where(
            headers.c.chain == chain, headers.c.number == number, headers.c.orphaned.is_(sa.false())
        )
    ).first()
    return _header(row) if row else None


def lowest(conn: sa.Connection, chain: str) -> int | None:
    return conn.execute(
        sa.select(sa.func.min(headers.c.number)).where(headers.c.chain == chain, headers.c.orphaned.is_(sa.false()))
    ).scalar()


def add(conn: sa.Connection, chain: str, h: Header) -> None:
    exists = conn.execute(
        sa.select(headers.c.hash).where(headers.c.chain == chain, headers.c.hash == h.hash)
    ).first()
    if exists:
        conn.execute(
            headers.update().where(headers.c.chain == chain, headers.c.hash == h.hash).values(orphaned=False)
        )
        return
    conn.execute(
        headers.insert().values(
            chain=chain, hash=h.hash, number=h.number, parent_hash=h.parent_hash, timestamp=h.timestamp
        )
    )


def orphan_above(conn: sa.Connection, chain: str, fork: int) -> list[Header]:
    rows = list(
        conn.execute(
            sa.select(headers)
            .where(headers.c.chain == chain, headers.c.number > fork, headers.c.orphaned.is_(sa.false()))
            .order_by(headers.c.number)
        )
    )
    conn.execute(
        headers.update()
        .where(headers.c.chain == chain, headers.c.number > fork, headers.c.orphaned.is_(sa.false()))
        .values(orphaned=True)
    )
    return [_header(r) for r in rows]


def is_canonical(conn: sa.Connection, chain: str, block_hash: str) -> bool:
    return conn.execute(
        sa.select(headers.c.hash).where(
            headers.c.chain == chain, headers.c.hash == block_hash, headers.c.orphaned.is_(sa.false())
        )
    ).first() is not None


def prune(conn: sa.Connection, chain: str, below: int) -> None:
    conn.execute(headers.delete().where(headers.c.chain == chain, headers.c.number < below))


def lead(conn: sa.Connection, name: str, owner: str, now: float, ttl: float) -> bool:
    """Take or keep a named leadership lease (one head follower per chain)."""
    took = conn.execute(
        leaders.update()
        .where(leaders.c.name == name, sa.or_(leaders.c.owner == owner, leaders.c.expires < now))
        .values(owner=owner, expires=now + ttl)
    ).rowcount
    if took:
        return True
    if conn.execute(sa.select(leaders.c.name).where(leaders.c.name == name)).first() is None:
        conn.execute(leaders.insert().values(name=name, owner=owner, expires=now + ttl))
        return True
    return False


def _header(row: Any) -> Header:
    return Header(int(row.number), row.hash, row.parent_hash, int(row.timestamp))
