"""The tracker's window of canonical headers, per chain.

``TrackerConfig.window`` headers below the head, and down to the block of any
submission still waiting for its finality policy (``tracker.keep_from``), so a reorg
can be walked back to its fork point from stored data, and a restart (or a reorg while
every worker was down) is detected by comparing stored hashes with the node's.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..storage.schema import headers, leaders
from .adapter import Header


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


# The head follower's statements, built once with bind parameters (it runs them on
# every head; building a Core statement costs more than running it locally).
_SAME_HASH = sa.and_(headers.c.chain == sa.bindparam("b_chain"), headers.c.hash == sa.bindparam("b_hash"))
_EXISTS = sa.select(headers.c.hash).where(_SAME_HASH)
_RESTORE = headers.update().where(_SAME_HASH).values(orphaned=False)
_INSERT = headers.insert()
_PRUNE = headers.delete().where(headers.c.chain == sa.bindparam("b_chain"), headers.c.number < sa.bindparam("below"))


def add(conn: sa.Connection, chain: str, h: Header) -> None:
    key = {"b_chain": chain, "b_hash": h.hash}
    if conn.execute(_EXISTS, key).first():
        conn.execute(_RESTORE, key)
        return
    conn.execute(_INSERT, {"chain": chain, "hash": h.hash, "number": h.number, "parent_hash": h.parent_hash,
                           "timestamp": h.timestamp})


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
    conn.execute(_PRUNE, {"b_chain": chain, "below": below})


_RENEW = (
    leaders.update()
    .where(leaders.c.name == sa.bindparam("b_name"),
           sa.or_(leaders.c.owner == sa.bindparam("b_owner"), leaders.c.expires < sa.bindparam("now")))
    .values(owner=sa.bindparam("b_owner"), expires=sa.bindparam("until"))
)
_LEADER = sa.select(leaders.c.name).where(leaders.c.name == sa.bindparam("b_name"))


def lead(conn: sa.Connection, name: str, owner: str, now: float, ttl: float) -> bool:
    """Take or keep a named leadership lease (one head follower per chain)."""
    if conn.execute(_RENEW, {"b_name": name, "b_owner": owner, "now": now, "until": now + ttl}).rowcount:
        return True
    if conn.execute(_LEADER, {"b_name": name}).first() is None:
        conn.execute(leaders.insert().values(name=name, owner=owner, expires=now + ttl))
        return True
    return False


def _header(row: Any) -> Header:
    return Header(int(row.number), row.hash, row.parent_hash, int(row.timestamp))
