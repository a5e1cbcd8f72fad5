"""SQL for on-chain submissions: intents, the nonce table, signed attempts.

The nonce table is the single source of nonces per (chain, sender); a nonce is handed
out in the same transaction that binds it to an idempotency key, so a key has exactly
one nonce forever and no nonce is given twice, with any number of workers.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..states import SubmissionState
from ..storage.schema import nonces, submissions, tx_attempts
from .adapter import SignedTx


def intent(
    conn: sa.Connection, *, chain: str, sender: str, key: str, run_id: str, step: str,
    request: str, finality: str, now: float,
) -> sa.Row[Any]:
    """The submission for this key, created on first sight (step 1 of the protocol)."""
    found = by_key(conn, chain, sender, key)
    if found is not None:
        return found
    conn.execute(
        submissions.insert().values(
            chain=chain, sender=sender, idempotency_key=key, run_id=run_id, step=step, request=request,
            finality=finality, state=SubmissionState.INTENT, created_at=now, updated_at=now,
        )
    )
    row = by_key(conn, chain, sender, key)
    assert row is not None
    return row


def by_key(conn: sa.Connection, chain: str, sender: str, key: str) -> sa.Row[Any] | None:
    return conn.execute(
        sa.select(submissions).where(
            submissions.c.chain == chain, submissions.c.sender == sender, submissions.c.idempotency_key == key
        )
    ).first()


def get(conn: sa.Connection, sub_id: int) -> sa.Row[Any]:
    return conn.execute(sa.select(submissions).where(submissions.c.id == sub_id)).one()


def allocate_nonce(conn: sa.Connection, sub_id: int, seed: int | None, request: str, now: float) -> int | None:
    """Bind the next nonce to a submission; None means the table needs a ``seed`` first."""
    row = conn.execute(
        sa.select(submissions.c.nonce, submissions.c.chain, submissions.c.sender).where(submissions.c.id == sub_id)
    ).one()
    if row.nonce is not None:
        return int(row.nonce)
    if seed is not None:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            insert(nonces).values(chain=row.chain, sender=row.sender, next_nonce=seed).on_conflict_do_nothing()
        )
    got = conn.execute(
        nonces.update()
        .where(nonces.c.chain == row.chain, nonces.c.sender == row.sender)
        .values(next_nonce=nonces.c.next_nonce + 1)
        .returning(nonces.c.next_nonce)
    ).first()
    if got is None:
        return None
    nonce = int(got[0]) - 1
    conn.execute(
        submissions.update()
        .where(submissions.c.id == sub_id)
        .values(nonce=nonce, state=SubmissionState.ALLOCATED, request=request, updated_at=now)
    )
    return nonce


def add_attempt(conn: sa.Connection, sub_id: int, chain: str, signed: SignedTx, now: float) -> None:
    """Signed bytes are durable before they are broadcast (step 3 of the protocol)."""
    conn.execute(
        tx_attempts.insert().values(
            submission_id=sub_id, chain=chain, tx_hash=signed.tx_hash, raw=signed.raw,
            fees=json.dumps(signed.fees), created_at=now,
        )
    )
    conn.execute(
        submissions.update()
        .where(submissions.c.id == sub_id,
               submissions.c.state.in_((SubmissionState.INTENT, SubmissionState.ALLOCATED)))
        .values(state=SubmissionState.SIGNED, updated_at=now)
    )


def attempts_of(conn: sa.Connection, sub_id: int) -> list[sa.Row[Any]]:
    return list(
        conn.execute(
            sa.select(tx_attempts).where(tx_attempts.c.submission_id == sub_id).order_by(tx_attempts.c.id)
        )
    )


def mark_broadcast(conn: sa.Connection, sub_id: int, now: float) -> None:
    """Sent (again): the re-broadcast clock restarts at the next head the tracker sees,
    since the sender does not know the chain's height."""
    conn.execute(
        submissions.update()
        .where(submissions.c.id == sub_id,
               submissions.c.state.in_((SubmissionState.SIGNED, SubmissionState.BROADCAST)))
        .values(state=SubmissionState.BROADCAST, last_broadcast_at=now, last_broadcast_block=None, updated_at=now)
    )


def mark_failed(conn: sa.Connection, sub_id: int, error: str, now: float) -> None:
    conn.execute(submissions.update().where(submissions.c.id == sub_id)
                 .values(state=SubmissionState.FAILED, error=error, updated_at=now))


def open_gap_fill(conn: sa.Connection, chain: str, sender: str, nonce: int, request: str, now: float) -> int:
    """A submission (no run) that burns ``nonce`` with a harmless self-transfer."""
    key = f"gap-fill:{nonce}"
    found = by_key(conn, chain, sender, key)
    if found is not None:
        return int(found.id)
    res = conn.execute(
        submissions.insert().values(
            chain=chain, sender=sender, idempotency_key=key, request=request,
            finality=json.dumps({"kind": "confirmations", "n": 1}), nonce=nonce, state=SubmissionState.ALLOCATED,
            gap_fill=True, created_at=now, updated_at=now,
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]
