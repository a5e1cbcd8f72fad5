"""A run's on-chain submissions as an operator reads them (``chainflow show``): each
intent's state, every transaction hash signed for it (fee bumps add versions), its
nonce or reserved coins, and its confirmations so far against what its finality
policy requires, counted from the head the trackers follow."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..storage import limits
from ..storage.schema import submissions
from . import chainstore


@dataclass(frozen=True)
class SubmissionView:
    step: str | None  # the journal key of the submit that made it ("branch/key" off the main branch)
    chain: str
    sender: str
    idempotency_key: str
    state: str  # a SubmissionState
    tx_hashes: list[str]  # every signed version, oldest first
    mined_tx: str | None  # the version a block holds
    block_number: int | None
    nonce: int | None  # account chains
    coins: list[str] = field(default_factory=list)  # UTXO chains: reserved outpoints
    confirmations: int = 0  # blocks on top of (and including) its block, by the followed head
    required: str = ""  # "12 confirmations", "finalized", "safe"
    stuck_since: float | None = None
    error: str | None = None


def of_run(conn: sa.Connection, run_id: str) -> list[SubmissionView]:
    rows = conn.execute(sa.select(submissions).where(submissions.c.run_id == run_id).order_by(submissions.c.id))
    tips: dict[str, int | None] = {}
    out = []
    for s in rows:
        if s.chain not in tips:
            tip = chainstore.header_tip(conn, s.chain)
            tips[s.chain] = None if tip is None else tip.number
        head = tips[s.chain]
        seen = 0 if s.block_number is None or head is None else max(0, head - int(s.block_number) + 1)
        out.append(SubmissionView(
            step=limits.stored_step_label(s.step), chain=s.chain, sender=s.sender,
            idempotency_key=s.idempotency_key, state=s.state,
            tx_hashes=chainstore.candidate_hashes(conn, s.id), mined_tx=s.tx_hash,
            block_number=None if s.block_number is None else int(s.block_number),
            nonce=None if s.nonce is None else int(s.nonce), coins=chainstore.reservation_of(conn, s.id),
            confirmations=seen, required=_required(s.finality), stuck_since=s.stuck_since,
            error=s.error,
        ))
    return out


def _required(policy: str) -> str:
    data: dict[str, Any] = json.loads(policy)
    if data.get("kind") == "confirmations":
        return f"{data['n']} confirmation{'s' if data['n'] != 1 else ''}"
    return str(data.get("kind", policy))
