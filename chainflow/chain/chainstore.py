"""The chain layer's store: every SQL statement about on-chain submissions (intents,
their conflict domains, signed candidates, nonces and coin reservations), the tracked
headers and the tracker's leadership, and recorded reorgs.  The runs store
(``storage.store``) holds the rest; nothing else in the chain layer speaks SQL.

An intent's conflict domain is bound to it in the same transaction that moves it to
``allocated``, so a key has exactly one domain forever and no domain is given to two
intents, with any number of workers: the nonce table is the single source of nonces
per (chain, sender) on account chains; the reservations table's primary key makes an
outpoint belong to one intent on UTXO chains.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .. import metrics
from ..states import TERMINAL, RunState, SubmissionState
from ..storage import codec, limits, store
from ..storage.schema import (headers, leaders, nonces, releases, reorgs, reservations, runs, sharers, submissions,
                              tx_attempts)
from .adapter import Coin, Header, Receipt, SignedTx
from .reorg import REORG_SIGNAL, SETTLED

T = TypeVar("T")


# The submission protocol's statements, built once with bind parameters: every submit
# runs each of them, and building a Core statement costs more than running it locally.
_BY_KEY = sa.select(submissions).where(
    submissions.c.chain == sa.bindparam("b_chain"), submissions.c.sender == sa.bindparam("b_sender"),
    submissions.c.idempotency_key == sa.bindparam("b_key"))
_NEW_INTENT = submissions.insert().values(state=SubmissionState.INTENT).returning(*submissions.c)
_GET = sa.select(submissions).where(submissions.c.id == sa.bindparam("b_id"))
# Postgres: find or create in one round trip (a new intent is every mint's first write).
# The insert yields to an existing key and the select finds that one; an insert that
# waited for a concurrent creator of the same key finds it in neither branch (the
# statement's snapshot predates that commit), and ``intent`` looks again.
_CREATED = (
    postgresql.insert(submissions)
    .values({c: sa.bindparam(c) for c in ("chain", "sender", "idempotency_key", "run_id", "step", "request",
                                         "finality", "created_at", "updated_at")} | {"state": SubmissionState.INTENT})
    .on_conflict_do_nothing(index_elements=[submissions.c.chain, submissions.c.sender,
                                            submissions.c.idempotency_key])
    .returning(*submissions.c)
    .cte("created")
)
_FIND_OR_CREATE = sa.select(_CREATED).union_all(_BY_KEY)
_GET_LOCKED = _GET.with_for_update()


def _first(rows: Sequence[Any]) -> Any:
    return rows[0] if rows else None


def opening(dialect: str, *, chain: str, sender: str, key: str, run_id: str | None, step: str, request: str,
            finality: str, now: float, admit: Callable[[], None] | None = None) -> store.Op:
    """The op opening the intent for this key (``intent``) in a run's group commit: on
    Postgres, when a new intent would be admitted, a query the batch's runs send
    together, whose result is None when a concurrent creator of the key raced it (look
    it up with ``intent_by_lookup`` then)."""
    if dialect == "postgresql" and _admits(admit):
        return _find_or_create(chain, sender, key, run_id, step, request, finality, now)
    return lambda conn: intent_by_lookup(conn, chain=chain, sender=sender, key=key, run_id=run_id, step=step,
                                         request=request, finality=finality, now=now, admit=admit)


def _find_or_create(chain: str, sender: str, key: str, run_id: str | None, step: str, request: str, finality: str,
                    now: float) -> store.Query:
    return store.Query(_FIND_OR_CREATE, {
        "chain": chain, "sender": sender, "idempotency_key": key, "run_id": run_id, "step": step,
        "request": request, "finality": finality, "created_at": now, "updated_at": now,
        "b_chain": chain, "b_sender": sender, "b_key": key}, _first)


def intent(
    conn: sa.Connection, *, chain: str, sender: str, key: str, run_id: str | None, step: str,
    request: str, finality: str, now: float, admit: Callable[[], None] | None = None,
) -> sa.Row[Any]:
    """The submission for this key, created on first sight (step 1 of the protocol);
    ``admit`` is called before creating one and raises to refuse it."""
    if conn.dialect.name == "postgresql" and _admits(admit):
        found = _find_or_create(chain, sender, key, run_id, step, request, finality, now)(conn)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return intent_by_lookup(conn, chain=chain, sender=sender, key=key, run_id=run_id, step=step, request=request,
                            finality=finality, now=now, admit=admit)


def intent_by_lookup(
    conn: sa.Connection, *, chain: str, sender: str, key: str, run_id: str | None, step: str,
    request: str, finality: str, now: float, admit: Callable[[], None] | None = None,
) -> sa.Row[Any]:
    """``intent`` as a lookup, then an insert: SQLite's way, and Postgres's once the
    one-statement form found nothing (a concurrent creator of the key raced it)."""
    found = by_key(conn, chain, sender, key)
    if found is not None:
        return found
    if admit is not None:
        admit()
    return conn.execute(_NEW_INTENT, {"chain": chain, "sender": sender, "idempotency_key": key, "run_id": run_id,
                                      "step": step, "request": request, "finality": finality, "created_at": now,
                                      "updated_at": now}).one()


def _admits(admit: Callable[[], None] | None) -> bool:
    """Whether a new intent would be admitted; a refusal is raised only for a key that
    has no intent yet (the lookup in ``intent`` calls ``admit`` again)."""
    try:
        if admit is not None:
            admit()
    except Exception:  # noqa: BLE001 - see above: raised again where it applies
        return False
    return True


def by_key(conn: sa.Connection, chain: str, sender: str, key: str) -> sa.Row[Any] | None:
    return conn.execute(_BY_KEY, {"b_chain": chain, "b_sender": sender, "b_key": key}).first()


def submissions_of(conn: sa.Connection, run_ids: list[str], tx_hashes: list[str]) -> list[sa.Row[Any]]:
    """The submissions runs made, and those their receipts name (a fork's submission
    with a key its parent used resolved to the parent's): what a replay compares a new
    transaction with."""
    found: dict[int, sa.Row[Any]] = {}
    for column, values in ((submissions.c.run_id, run_ids), (submissions.c.tx_hash, tx_hashes)):
        for i in range(0, len(values), 500):
            for row in conn.execute(sa.select(submissions).where(column.in_(values[i:i + 500]))):
                found[row.id] = row
    return [found[i] for i in sorted(found)]


def get(conn: sa.Connection, sub_id: int) -> sa.Row[Any]:
    return conn.execute(_GET, {"b_id": sub_id}).one()


_NEXT_NONCE = (
    nonces.update()
    .where(nonces.c.chain == sa.bindparam("b_chain"), nonces.c.sender == sa.bindparam("b_sender"))
    .values(next_nonce=nonces.c.next_nonce + 1)
    .returning(nonces.c.next_nonce)
)
_BIND_NONCE = submissions.update().where(submissions.c.id == sa.bindparam("b_id")).values(
    nonce=sa.bindparam("b_nonce"), state=SubmissionState.ALLOCATED, request=sa.bindparam("b_request"),
    updated_at=sa.bindparam("now")).returning(*submissions.c)


# Postgres: the three steps of ``allocate_nonce`` in one round trip.  ``target`` locks
# the intent first (the lock order: the intent, then its sender's nonce row), and only
# while it has no nonce; only then is a nonce taken and bound.  Anything else (a nonce
# bound meanwhile by a run sharing the key, no nonce row) binds nothing here and takes
# the three steps, which tell which.
_TARGET = (sa.select(submissions.c.id, submissions.c.chain, submissions.c.sender)
           .where(submissions.c.id == sa.bindparam("b_id"), submissions.c.nonce.is_(None))
           .with_for_update().cte("target"))
_TAKEN = (nonces.update()
          .where(nonces.c.chain == _TARGET.c.chain, nonces.c.sender == _TARGET.c.sender)
          .values(next_nonce=nonces.c.next_nonce + 1)
          .returning((nonces.c.next_nonce - 1).label("nonce"), _TARGET.c.id)
          .cte("taken"))
_TAKE_AND_BIND = submissions.update().where(submissions.c.id == _TAKEN.c.id).values(
    nonce=_TAKEN.c.nonce, state=SubmissionState.ALLOCATED, request=sa.bindparam("b_request"),
    updated_at=sa.bindparam("now")).returning(*submissions.c)


def take_nonce(dialect: str, sub_id: int, request: str, now: float) -> store.Op:
    """The op binding a nonce (``allocate_nonce``) in a run's group commit: on Postgres a
    query the batch's runs send together, whose result is None when it bound nothing
    (bind with ``allocate_nonce_in_steps`` then, which tells why)."""
    if dialect == "postgresql":
        return _take(sub_id, request, now)
    return lambda conn: allocate_nonce_in_steps(conn, sub_id, request, now)


def _take(sub_id: int, request: str, now: float) -> store.Query:
    return store.Query(_TAKE_AND_BIND, {"b_id": sub_id, "b_request": request, "now": now}, _first)


def allocate_nonce(conn: sa.Connection, sub_id: int, request: str, now: float) -> sa.Row[Any]:
    """Bind the next nonce to a submission; the submission as it is then.  The sender's
    nonce row must exist (``seed_nonces``)."""
    if conn.dialect.name == "postgresql":
        bound = _take(sub_id, request, now)(conn)
        if bound is not None:
            return bound  # type: ignore[no-any-return]
    return allocate_nonce_in_steps(conn, sub_id, request, now)


def allocate_nonce_in_steps(conn: sa.Connection, sub_id: int, request: str, now: float) -> sa.Row[Any]:
    """``allocate_nonce`` in three statements (lock the intent, take the sender's next
    nonce, bind it): SQLite's way, and Postgres's once the one-statement form bound
    nothing, telling why (bound already: the intent as it is; no nonce row: raised)."""
    # locked: two runs sharing an idempotency key may allocate its intent at once, and
    # the second must see the first's nonce, not bind (and so skip) another
    row = conn.execute(_GET_LOCKED, {"b_id": sub_id}).one()
    if row.nonce is not None:
        return row
    got = conn.execute(_NEXT_NONCE, {"b_chain": row.chain, "b_sender": row.sender}).first()
    if got is None:
        raise LookupError(f"no nonce row for sender {row.sender} on chain {row.chain!r}: seed_nonces first")
    return conn.execute(_BIND_NONCE, {"b_id": sub_id, "b_nonce": int(got[0]) - 1, "b_request": request,
                                      "now": now}).one()


def has_nonces(conn: sa.Connection, chain: str, sender: str) -> bool:
    return conn.execute(sa.select(nonces.c.next_nonce).where(nonces.c.chain == chain, nonces.c.sender == sender)
                        ).first() is not None


def seed_nonces(conn: sa.Connection, chain: str, sender: str, seed: int) -> None:
    """Start the sender's nonces at ``seed`` (the chain's pending nonce), unless a row
    exists: then it is the truth, and the chain's view is not."""
    conn.execute(_insert(conn, nonces).values(chain=chain, sender=sender, next_nonce=seed).on_conflict_do_nothing())


def _with_members(sub_id: int | sa.BindParameter[Any]) -> Any:
    """The submission and, when it is a batch, its members: a batch's members follow
    its state (signed, broadcast, failed) since they are paid by its transactions.
    ``sub_id`` may be a bind parameter (a statement built once)."""
    return sa.or_(submissions.c.id == sub_id, submissions.c.batch_id == sub_id)


_NEW_ATTEMPT = tx_attempts.insert()
_SIGNED = (
    submissions.update()
    .where(_with_members(sa.bindparam("b_id")),
           store.one_of(submissions.c.state,
                        (SubmissionState.INTENT, SubmissionState.QUEUED, SubmissionState.ALLOCATED)))
    .values(state=SubmissionState.SIGNED, updated_at=sa.bindparam("now"))
    .returning(*submissions.c)
)


def add_attempt(conn: sa.Connection, sub_id: int, chain: str, signed: SignedTx, now: float) -> sa.Row[Any] | None:
    """Signed bytes are durable before they are broadcast (step 3 of the protocol).  The
    submission when this version signed it first (None for a later version: it was
    signed already)."""
    attempt(sub_id, chain, signed, now)(conn)
    return mark_signed(sub_id, now)(conn)  # type: ignore[no-any-return]


def attempt(sub_id: int, chain: str, signed: SignedTx, now: float) -> store.Exec:
    """The insert of a signed version, for a run's group commit with ``mark_signed``."""
    return store.Exec(_NEW_ATTEMPT, {"submission_id": sub_id, "chain": chain, "tx_hash": signed.tx_hash,
                                     "raw": signed.raw, "fees": json.dumps(signed.fees), "created_at": now})


def mark_signed(sub_id: int, now: float) -> store.Query:
    """A batch's members follow its state (``_with_members``); the submission when it
    was not signed before, else None."""
    return store.Query(_SIGNED, {"b_id": sub_id, "now": now},
                       lambda rows: next((row for row in rows if row.id == sub_id), None))


_ATTEMPTS_OF = sa.select(tx_attempts).where(tx_attempts.c.submission_id == sa.bindparam("b_id")).order_by(
    tx_attempts.c.id)
_BROADCAST = (
    submissions.update()
    .where(_with_members(sa.bindparam("b_id")),
           store.one_of(submissions.c.state, (SubmissionState.SIGNED, SubmissionState.BROADCAST)))
    .values(state=SubmissionState.BROADCAST, last_broadcast_at=sa.bindparam("now"), last_broadcast_block=None,
            updated_at=sa.bindparam("now"))
)


def attempts_of(conn: sa.Connection, sub_id: int) -> list[sa.Row[Any]]:
    return list(conn.execute(_ATTEMPTS_OF, {"b_id": sub_id}))


def mark_broadcast(sub_id: int, now: float) -> store.Exec:
    """Sent (again): the re-broadcast clock restarts at the next head the tracker sees,
    since the sender does not know the chain's height.  A batch's members follow it."""
    return store.Exec(_BROADCAST, {"b_id": sub_id, "now": now})


def mark_failed(conn: sa.Connection, sub_id: int, error: str, now: float) -> None:
    """Failed for good, with a batch's members; their runs are woken to raise it (a
    single intent's own run is executing the step that failed it, and reads it then)."""
    _fail(conn, _with_members(sub_id), error, now, skip=sub_id)


def _fail(conn: sa.Connection, where: Any, error: str, now: float, skip: int | None = None) -> None:
    """Fail the submissions ``where`` selects and wake their parked runs (all but
    ``skip``'s).  The signals go first: sending them locks the runs, which comes before
    the submissions as everywhere (``store`` lock order); the commit shows both at once."""
    woken = [r for r in conn.execute(sa.select(submissions.c.id, submissions.c.run_id).where(where))
             if r.run_id and r.id != skip]
    store.insert_signals(conn, [(r.run_id, event_name(int(r.id)), "null") for r in woken], now)
    conn.execute(submissions.update().where(where).values(state=SubmissionState.FAILED, error=error, updated_at=now))


def open_gap_fill(conn: sa.Connection, chain: str, sender: str, nonce: int, request: str, now: float) -> int:
    """A submission (no run) that burns ``nonce`` with a harmless self-transfer."""
    key = f"{limits.GAP_FILL_KEY_PREFIX}{nonce}"
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


def locked(sub_id: int) -> store.Query:
    """The submission, its row locked until the transaction ends: a step journals its
    receipt only under this lock, and only if the submission is final, so a reorg
    racing the journal write either lands first or sees the entry and rolls it back."""
    return store.Query(_GET_LOCKED, {"b_id": sub_id}, _first)


def candidate_hashes(conn: sa.Connection, sub_id: int) -> list[str]:
    """Every signed version's hash, oldest first: the intent's candidate set."""
    return [r.tx_hash for r in conn.execute(
        sa.select(tx_attempts.c.tx_hash).where(tx_attempts.c.submission_id == sub_id).order_by(tx_attempts.c.id))]


# --- intents no configured chain follows -----------------------------------------------

_UNSETTLED = (SubmissionState.INTENT, SubmissionState.QUEUED, SubmissionState.ALLOCATED, SubmissionState.SIGNED,
              SubmissionState.BROADCAST, SubmissionState.INCLUDED)


def unfollowed(conn: sa.Connection, chains: list[str]) -> dict[str, int]:
    """Unsettled submissions per chain name not in ``chains``: a chain renamed or
    dropped from the configuration, whose intents nothing follows any more."""
    return {row.chain: int(row.n) for row in conn.execute(
        sa.select(submissions.c.chain, sa.func.count().label("n"))
        .where(store.one_of(submissions.c.state, _UNSETTLED), submissions.c.chain.not_in(chains))
        .group_by(submissions.c.chain))}


# --- runs sharing an intent another run opened -----------------------------------------

_sharer_run = runs.alias("sharer_run")
# an intent a live run shares: it is that run's payment too, whatever became of its opener
_SHARED_LIVE = sa.exists().where(sharers.c.submission_id == submissions.c.id, _sharer_run.c.id == sharers.c.run_id,
                                 _sharer_run.c.status.not_in(TERMINAL))


def share(conn: sa.Connection, sub_id: int, run_id: str, step: str, now: float) -> None:
    """Record that ``run_id`` waits on intent ``sub_id``, which another run opened,
    at its ``step`` (``branch\x1fkey``); once is enough."""
    if conn.execute(sa.select(sharers.c.run_id).where(sharers.c.submission_id == sub_id,
                                                       sharers.c.run_id == run_id)).first() is None:
        conn.execute(sharers.insert().values(submission_id=sub_id, run_id=run_id, step=step, created_at=now))


# a run that waits on an intent no longer wants it once it has released it, or ended
# failed or cancelled (a dead-lettered one may be retried, a completed one kept it)
_GAVE_UP = (RunState.FAILED, RunState.CANCELLED)


def give_up(conn: sa.Connection, sub: sa.Row[Any], run_id: str, now: float) -> bool:
    """Record that ``run_id``, stopped while waiting on intent ``sub`` (which it opened or
    shares), no longer wants it; whether another run that waits on it still does.  The
    caller holds the intent's row lock (``locked``): of runs giving it up together, the
    last to decide sees the others' releases and is the one to undo the payment."""
    sub_id = int(sub.id)
    if conn.execute(sa.select(releases.c.run_id).where(releases.c.submission_id == sub_id,
                                                       releases.c.run_id == run_id)).first() is None:
        conn.execute(releases.insert().values(submission_id=sub_id, run_id=run_id, created_at=now))
    waiting = {sub.run_id, *(r.run_id for r in sharers_of(conn, [sub_id]))} - {run_id, None}
    if not waiting:
        return False
    released = sa.select(releases.c.run_id).where(releases.c.submission_id == sub_id)
    return conn.execute(sa.select(sa.func.count()).select_from(runs).where(
        runs.c.id.in_(sorted(waiting)), runs.c.status.not_in(_GAVE_UP), runs.c.id.not_in(released))).scalar_one() > 0


def sharers_of(conn: sa.Connection, sub_ids: list[int]) -> list[sa.Row[Any]]:
    """(submission_id, run_id, step) of every run sharing one of these intents."""
    return list(conn.execute(sa.select(sharers.c.submission_id, sharers.c.run_id, sharers.c.step)
                             .where(sharers.c.submission_id.in_(sub_ids)).order_by(sharers.c.run_id)))


# --- never-signed intents whose run ended --------------------------------------------

_ORPHANED = (  # built once: the tracker asks on every head
    sa.select(submissions.c.id, submissions.c.sender, submissions.c.nonce)
    .join(runs, runs.c.id == submissions.c.run_id)
    .where(submissions.c.chain == sa.bindparam("chain"), submissions.c.state == SubmissionState.ALLOCATED,
           submissions.c.gap_fill.is_(sa.false()), store.one_of(runs.c.status, TERMINAL), ~_SHARED_LIVE)
)


def orphaned_allocations(conn: sa.Connection, chain: str) -> list[sa.Row[Any]]:
    """Submissions holding a conflict domain (a nonce, coins) they will never sign
    with: their run is over, and no live run shares them.  Nothing of theirs was
    signed, so they are provably dead."""
    return list(conn.execute(_ORPHANED, {"chain": chain}))


def mark_abandoned(conn: sa.Connection, sub_id: int, reason: str, now: float) -> bool:
    """Failed, if still unsigned; whether it was."""
    return bool(conn.execute(
        submissions.update().where(submissions.c.id == sub_id, submissions.c.state == SubmissionState.ALLOCATED)
        .values(state=SubmissionState.FAILED, error=reason, updated_at=now)
    ).rowcount)


def abandon_coins(conn: sa.Connection, sub_id: int, reason: str, now: float) -> None:
    """Fail an intent whose run ended before it signed and give its coins back, in one
    transaction and only while it is still unsigned: a run sharing its key may have
    signed since it was read as orphaned, and those coins are then spent by a valid
    version."""
    if mark_abandoned(conn, sub_id, reason, now):
        release(conn, sub_id)


def fail_unsigned(conn: sa.Connection, sub_id: int, error: str, now: float) -> None:
    """Fail an intent (a batch with its members) whose signing failed for good and give
    its coins back, in one transaction: apart, a crash between the two left it
    ``allocated`` over no coin -- a batch every later batcher step tried to sign again,
    failing each, a payout whose resumed run signed it over nothing and failed with
    that error instead of the signer's, the intent left allocated."""
    mark_failed(conn, sub_id, error, now)
    release(conn, sub_id)


# --- a UTXO chain's conflict domain: reserved coins ----------------------------------

# intents one of whose versions may still be the one the chain keeps
_ON_THE_WIRE = (SubmissionState.SIGNED, SubmissionState.BROADCAST, SubmissionState.INCLUDED)


@dataclass(frozen=True)
class Offer:
    """The wallet's coins a new intent may reserve, and the value of those it may not
    (so a refusal can say the wallet is not empty: the adapter sees ``free`` only)."""

    free: list[Coin]
    reserved: int  # owned by an intent
    unsettled: int  # change of one of our intents that is not final yet

    def held_back(self) -> str:
        """"; not offered: ..." naming what the wallet holds beyond ``free``, or ""."""
        parts = []
        if self.unsettled:
            parts.append(f"{self.unsettled} in change of payouts not final yet (offered once they are)")
        if self.reserved:
            parts.append(f"{self.reserved} reserved by other payouts")
        return f"; not offered: {', '.join(parts)}" if parts else ""


def offer(conn: sa.Connection, chain: str, coins: list[Coin]) -> Offer:
    """Of the wallet's ``coins`` on ``chain``, those a new intent may reserve: none an
    intent owns, and none created by a version of one of our intents that is not final.
    Each version pays its change to its own txid, and until the intent is final a reorg
    may settle it with another version: the output can then never exist, and an intent
    that reserved it would wait for it for ever."""
    owned = {r.outpoint for r in conn.execute(sa.select(reservations.c.outpoint).where(reservations.c.chain == chain))}
    unsettled = {r.tx_hash for r in conn.execute(
        sa.select(tx_attempts.c.tx_hash).join(submissions, submissions.c.id == tx_attempts.c.submission_id)
        .where(submissions.c.chain == chain, submissions.c.state.in_(_ON_THE_WIRE)))}
    free, reserved, pending = [], 0, 0
    for c in coins:
        if c.outpoint in owned:
            reserved += c.value
        elif c.outpoint.rpartition(":")[0] in unsettled:
            pending += c.value
        else:
            free.append(c)
    return Offer(free, reserved, pending)


def reservation_of(conn: sa.Connection, sub_id: int) -> list[str]:
    """The outpoints reserved for one intent, sorted: what every version spends."""
    return [r.outpoint for r in conn.execute(
        sa.select(reservations.c.outpoint).where(reservations.c.submission_id == sub_id)
        .order_by(reservations.c.outpoint))]


def reserve(conn: sa.Connection, sub_id: int, chain: str, coins: list[Coin], request: str, now: float) -> bool:
    """Reserve ``coins`` for the intent and move it to ``allocated``, all or nothing.

    False when another intent reserved one of them first (a concurrent worker): the
    caller selects again.  Conflicts are detected by the primary key with ``ON
    CONFLICT DO NOTHING`` rather than by an error, which would roll back the other
    runs' writes sharing this group commit."""
    state = conn.execute(sa.select(submissions.c.state).where(submissions.c.id == sub_id)).scalar_one()
    if state != SubmissionState.INTENT:
        return True  # reserved already (a retry after a lost commit answer)
    taken = 0
    for coin in coins:  # RETURNING, not rowcount: psycopg reports -1 for a skipped conflict
        taken += conn.execute(
            _insert(conn, reservations).values(chain=chain, outpoint=coin.outpoint, submission_id=sub_id,
                                               value=coin.value, created_at=now)
            .on_conflict_do_nothing().returning(reservations.c.outpoint)
        ).first() is not None
    if taken < len(coins):
        release(conn, sub_id)
        return False
    conn.execute(submissions.update().where(submissions.c.id == sub_id)
                 .values(state=SubmissionState.ALLOCATED, request=request, updated_at=now))
    return True


def release(conn: sa.Connection, sub_id: int) -> None:
    """Give an intent's coins back: only for an intent that is provably dead."""
    conn.execute(reservations.delete().where(reservations.c.submission_id == sub_id))


def held_by_failed(conn: sa.Connection, chain: str) -> list[sa.Row[Any]]:
    """Failed intents still holding coins: a foreign transaction spent one of them (or
    made one impossible), and they are held until it is final (any of our candidates
    could still be included if it is reorged out)."""
    return list(conn.execute(
        sa.select(submissions).where(
            submissions.c.chain == chain, submissions.c.state == SubmissionState.FAILED,
            submissions.c.id.in_(sa.select(reservations.c.submission_id).where(
                reservations.c.chain == chain, reservations.c.spent_at_block.is_(None))))
        .order_by(submissions.c.id)))


def coin_reservations(conn: sa.Connection, chain: str | None = None) -> list[sa.Row[Any]]:
    """Every held reservation with its owner intent, for ``chainflow coins``."""
    q = (sa.select(reservations.c.chain, reservations.c.outpoint, reservations.c.value,
                   reservations.c.submission_id, submissions.c.idempotency_key, submissions.c.state,
                   submissions.c.run_id, submissions.c.batch_id)
         .join(submissions, submissions.c.id == reservations.c.submission_id)
         .where(reservations.c.spent_at_block.is_(None))
         .order_by(reservations.c.chain, reservations.c.outpoint))
    if chain is not None:
        q = q.where(reservations.c.chain == chain)
    return list(conn.execute(q))


# --- batches of payouts (UTXO chains) -------------------------------------------------


def queue(conn: sa.Connection, sub_id: int, request: str, now: float) -> None:
    """Checked and waiting for the chain's batcher (``batcher``)."""
    conn.execute(submissions.update()
                 .where(submissions.c.id == sub_id, submissions.c.state == SubmissionState.INTENT)
                 .values(state=SubmissionState.QUEUED, request=request, updated_at=now))


def queued(conn: sa.Connection, chain: str) -> list[sa.Row[Any]]:
    """Intents waiting for a batch, oldest first, with their run's status and whether
    a live run shares them."""
    return list(conn.execute(
        sa.select(submissions.c.id, submissions.c.request, submissions.c.finality, submissions.c.updated_at,
                  runs.c.status.label("run_status"), _SHARED_LIVE.label("shared"))
        .join(runs, runs.c.id == submissions.c.run_id, isouter=True)
        .where(submissions.c.chain == chain, submissions.c.state == SubmissionState.QUEUED,
               submissions.c.batch_id.is_(None))
        .order_by(submissions.c.id)))


def fail_queued(conn: sa.Connection, ids: list[int], error: str, now: float) -> None:
    """Queued intents that will never be batched (their run ended, or their payout
    alone cannot be funded): nothing was reserved for them."""
    _fail(conn, sa.and_(submissions.c.id.in_(ids), submissions.c.state == SubmissionState.QUEUED,
                        submissions.c.batch_id.is_(None)), error, now)


def withdraw_queued(conn: sa.Connection, sub_id: int, error: str, now: float) -> bool:
    """Fail a queued intent the runs waiting on it have given up (``give_up``), if no
    batch has taken it yet; whether it was.  They are stopping, so none is woken."""
    return bool(conn.execute(
        submissions.update().where(submissions.c.id == sub_id, submissions.c.state == SubmissionState.QUEUED,
                                   submissions.c.batch_id.is_(None))
        .values(state=SubmissionState.FAILED, error=error, updated_at=now)).rowcount)


class CoinsTaken(Exception):
    """A batch's coins or members changed hands before it was recorded: try again."""


def open_batch(conn: sa.Connection, chain: str, sender: str, member_ids: list[int], request: str, finality: str,
               coins: list[Coin], now: float) -> int:
    """Record a batch: its row (allocated, holding ``coins``) and its members, all or
    nothing.  Members are listed in merge order (ascending ids), which is how a
    member's output index is found again (``members_of``)."""
    res = conn.execute(submissions.insert().values(
        chain=chain, sender=sender, idempotency_key=f"{limits.BATCH_KEY_PREFIX}{member_ids[0]}", request=request,
        finality=finality, state=SubmissionState.ALLOCATED, created_at=now, updated_at=now))
    batch_id = int(res.inserted_primary_key[0])  # type: ignore[index]
    conn.execute(submissions.update().where(submissions.c.id == batch_id).values(batch_id=batch_id))
    linked = conn.execute(
        submissions.update().where(submissions.c.id.in_(member_ids), submissions.c.state == SubmissionState.QUEUED,
                                   submissions.c.batch_id.is_(None))
        .values(batch_id=batch_id, updated_at=now).returning(submissions.c.id)).all()
    if len(linked) != len(member_ids):
        raise CoinsTaken(f"members of batch {batch_id} changed")
    for coin in coins:
        if conn.execute(
            _insert(conn, reservations).values(chain=chain, outpoint=coin.outpoint, submission_id=batch_id,
                                               value=coin.value, created_at=now)
            .on_conflict_do_nothing().returning(reservations.c.outpoint)
        ).first() is None:
            raise CoinsTaken(coin.outpoint)
    return batch_id


def unsent_batches(conn: sa.Connection, chain: str) -> list[sa.Row[Any]]:
    """Batches recorded but not yet sent: the batcher finishes them (after a crash)."""
    return list(conn.execute(
        sa.select(submissions).where(
            submissions.c.chain == chain, submissions.c.batch_id == submissions.c.id,
            submissions.c.state.in_((SubmissionState.ALLOCATED, SubmissionState.SIGNED)))
        .order_by(submissions.c.id)))


def members_of(conn: sa.Connection, batch_ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """Each batch's members (id, finality policy JSON) in merge order."""
    out: dict[int, list[tuple[int, str]]] = {b: [] for b in batch_ids}
    for r in conn.execute(
        sa.select(submissions.c.id, submissions.c.batch_id, submissions.c.finality)
        .where(submissions.c.batch_id.in_(batch_ids), submissions.c.id != submissions.c.batch_id)
        .order_by(submissions.c.id)
    ):
        out[int(r.batch_id)].append((int(r.id), r.finality))
    return out


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


# signed and not yet seen in a block: what the tracker matches and re-broadcasts
OPEN = (SubmissionState.SIGNED, SubmissionState.BROADCAST)


def event_name(sub_id: int) -> str:
    """The signal the tracker sends a parked run when its submission settles."""
    return f"tx:{sub_id}"


# --- what the tracker reads and writes per head ------------------------------------
# Built once with bind parameters: building a Core statement costs several times its
# execution against a local database, and these run on every head.

_MATCHES = (
    sa.select(tx_attempts.c.submission_id, tx_attempts.c.tx_hash, submissions.c.finality, submissions.c.batch_id)
    .join(submissions, submissions.c.id == tx_attempts.c.submission_id)
    .where(tx_attempts.c.chain == sa.bindparam("chain"),
           tx_attempts.c.tx_hash.in_(sa.bindparam("hashes", expanding=True)),
           store.one_of(submissions.c.state, OPEN))
)
_INCLUDED = (
    sa.select(submissions.c.id, submissions.c.finality, submissions.c.block_number)
    .where(submissions.c.chain == sa.bindparam("chain"), submissions.c.state == SubmissionState.INCLUDED)
)
_STUCK = (
    sa.select(submissions)
    .where(submissions.c.chain == sa.bindparam("chain"), store.one_of(submissions.c.state, OPEN),
           submissions.c.last_broadcast_block <= sa.bindparam("older_than"),
           # a batch's members have no transactions of their own: the batch is handled
           sa.or_(submissions.c.batch_id.is_(None), submissions.c.batch_id == submissions.c.id))
    .order_by(submissions.c.nonce, submissions.c.id)
    .limit(sa.bindparam("limit"))
)
_START_REBROADCAST_CLOCK = (
    submissions.update()
    .where(submissions.c.chain == sa.bindparam("b_chain"), store.one_of(submissions.c.state, OPEN),
           submissions.c.last_broadcast_block.is_(None))
    .values(last_broadcast_block=sa.bindparam("head"))
)
_INCLUDE = (
    submissions.update()
    .where(submissions.c.id == sa.bindparam("sub_id"), store.one_of(submissions.c.state, OPEN))
    .values(state=SubmissionState.INCLUDED, tx_hash=sa.bindparam("b_tx_hash"),
            block_number=sa.bindparam("b_block_number"), block_hash=sa.bindparam("b_block_hash"),
            receipt=sa.bindparam("b_receipt"), stuck_since=None,
            updated_at=sa.bindparam("now"))
)


@dataclass
class HeadView:
    matches: list[tuple[int, str, str]]  # (submission, tx hash, finality policy JSON)
    included: list[tuple[int, str, int]]  # (submission, finality policy JSON, block number)
    stuck: list[Any]
    orphaned: list[Any]
    members: dict[int, list[tuple[int, str]]]  # of each matched batch (``members_of``)


def head_view(conn: sa.Connection, chain: str, hashes: list[str], older_than: int, limit: int) -> HeadView:
    """Everything one head needs to know from the database, in one read transaction."""
    matches: list[tuple[int, str, str]] = []
    batches: list[int] = []
    for i in range(0, len(hashes), 500):
        chunk = [h.lower() for h in hashes[i : i + 500]]
        for r in conn.execute(_MATCHES, {"chain": chain, "hashes": chunk}):
            matches.append((int(r.submission_id), r.tx_hash, r.finality))
            if r.batch_id is not None:
                batches.append(int(r.submission_id))
    included = [(int(r.id), r.finality, int(r.block_number)) for r in conn.execute(_INCLUDED, {"chain": chain})]
    stuck = list(conn.execute(_STUCK, {"chain": chain, "older_than": older_than, "limit": limit}))
    members = members_of(conn, batches) if batches else {}
    return HeadView(matches, included, stuck, orphaned_allocations(conn, chain), members)


def commit_head(conn: sa.Connection, chain: str, new: list[Header], receipts: list[tuple[int, Receipt]],
                 ready: list[int], head: int, keep: int | None, now: float, coins: bool) -> None:
    """Everything one head changes, in one write transaction.  ``coins``: the chain
    reserves coins (a UTXO chain); an account chain has no reservations to update."""
    for h in new:
        add_header(conn, chain, h)
    store_receipts(conn, receipts, now)
    if ready:
        _finalise(conn, ready, now, coins)
    # broadcast but not yet seen by the tracker: start its re-broadcast clock now
    conn.execute(_START_REBROADCAST_CLOCK, {"b_chain": chain, "head": head})
    if keep is not None:
        prune_headers(conn, chain, keep)
        if coins:  # spends below the window can no longer be reorged out as far as we follow
            conn.execute(_FORGET_SPENT, {"b_chain": chain, "below": keep})


def store_receipts(conn: sa.Connection, receipts: list[tuple[int, Receipt]], now: float) -> None:
    """One executemany: psycopg sends a head's receipts in one pipeline, not one round
    trip each (a busy sender has a hundred in a block)."""
    if receipts:
        conn.execute(_INCLUDE, [{"sub_id": sub_id, "b_tx_hash": r.tx_hash, "b_block_number": r.block_number,
                                 "b_block_hash": r.block_hash, "b_receipt": codec.dumps(r.to_dict()), "now": now}
                                for sub_id, r in receipts])


_FINAL = (
    submissions.update()
    .where(submissions.c.id.in_(sa.bindparam("ids", expanding=True)),
           submissions.c.state == SubmissionState.INCLUDED)
    .values(state=SubmissionState.FINAL, updated_at=sa.bindparam("now"))
    .returning(submissions.c.id, submissions.c.run_id)
)
# a final intent's coins are spent by its own transaction: recorded, no longer held
_SPENT = (
    reservations.update()
    .where(reservations.c.submission_id.in_(sa.bindparam("ids", expanding=True)))
    .values(spent_at_block=sa.select(submissions.c.block_number)
            .where(submissions.c.id == reservations.c.submission_id).scalar_subquery())
)
_FORGET_SPENT = reservations.delete().where(reservations.c.chain == sa.bindparam("b_chain"),
                                            reservations.c.spent_at_block < sa.bindparam("below"))


def _finalise(conn: sa.Connection, ids: list[int], now: float, coins: bool) -> None:
    """Included -> final, and the runs of those that turned final woken."""
    rows = list(conn.execute(_FINAL, {"ids": ids, "now": now}))
    if coins and rows:
        conn.execute(_SPENT, {"ids": [int(r.id) for r in rows]})
    store.insert_signals(conn, [(r.run_id, event_name(int(r.id)), "null") for r in rows if r.run_id], now)


def touch(conn: sa.Connection, sub_id: int, head: int) -> None:
    conn.execute(submissions.update().where(submissions.c.id == sub_id).values(last_broadcast_block=head))


def mark_stuck(conn: sa.Connection, sub_id: int, now: float) -> bool:
    """Flag an unmined submission whose fee budget is spent; True the first time.
    Cleared when it is included (``_INCLUDE``)."""
    return bool(conn.execute(
        submissions.update().where(submissions.c.id == sub_id, submissions.c.stuck_since.is_(None))
        .values(stuck_since=now)).rowcount)


def fail_foreign(conn: sa.Connection, sub_id: int, error: str, now: float) -> None:
    _fail(conn, sa.and_(_with_members(sub_id), submissions.c.state.in_(OPEN)), error, now)



def nonce_counters(conn: sa.Connection) -> list[sa.Row[Any]]:
    """Every (chain, sender) nonce counter, for ``chainflow nonces``."""
    return list(conn.execute(sa.select(nonces).order_by(nonces.c.chain, nonces.c.sender)))


def nonces_in_use(conn: sa.Connection, chain: str, sender: str) -> list[sa.Row[Any]]:
    """The nonces a sender's submissions hold (nonce, state, gap_fill), lowest first."""
    return list(conn.execute(
        sa.select(submissions.c.nonce, submissions.c.state, submissions.c.gap_fill)
        .where(submissions.c.chain == chain, submissions.c.sender == sender, submissions.c.nonce.is_not(None))
        .order_by(submissions.c.nonce)
    ))

# --- tracked headers and the tracker's leadership ---------------------------------
# TrackerConfig.window headers below the head, and down to the block of any submission
# still waiting for its finality policy (``tracker.keep_from``), so a reorg can be walked
# back to its fork point from stored data, and a restart (or a reorg while every worker
# was down) is detected by comparing stored hashes with the node's.

def header_tip(conn: sa.Connection, chain: str) -> Header | None:
    row = conn.execute(
        sa.select(headers)
        .where(headers.c.chain == chain, headers.c.orphaned.is_(sa.false()))
        .order_by(headers.c.number.desc())
        .limit(1)
    ).first()
    return _header(row) if row else None


def header_at(conn: sa.Connection, chain: str, number: int) -> Header | None:
    row = conn.execute(
        sa.select(headers).where(
            headers.c.chain == chain, headers.c.number == number, headers.c.orphaned.is_(sa.false())
        )
    ).first()
    return _header(row) if row else None


def lowest_header(conn: sa.Connection, chain: str) -> int | None:
    return conn.execute(
        sa.select(sa.func.min(headers.c.number)).where(headers.c.chain == chain, headers.c.orphaned.is_(sa.false()))
    ).scalar()


# The head follower's statements, built once with bind parameters (it runs them on
# every head; building a Core statement costs more than running it locally).  A
# header seen again (the chain reorged back to it) is restored, not inserted twice.
_UPSERT = {name: build(headers).on_conflict_do_update(index_elements=[headers.c.chain, headers.c.hash],
                                                      set_={"orphaned": False})
           for name, build in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))}
_PRUNE = headers.delete().where(headers.c.chain == sa.bindparam("b_chain"), headers.c.number < sa.bindparam("below"))


def add_header(conn: sa.Connection, chain: str, h: Header) -> None:
    conn.execute(_UPSERT[conn.dialect.name], {"chain": chain, "hash": h.hash, "number": h.number,
                                              "parent_hash": h.parent_hash, "timestamp": h.timestamp})


def orphan_headers_above(conn: sa.Connection, chain: str, fork: int) -> list[Header]:
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


def prune_headers(conn: sa.Connection, chain: str, below: int) -> None:
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


class NotLeader(Exception):
    """Another process holds the leadership lease: the transaction that found out is
    rolled back, nothing of it written."""


def as_leader(conn: sa.Connection, name: str, owner: str, now: float, ttl: float,
              fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` fenced by the leadership lease ``name``: taken or kept first
    in the same transaction (``lead``), so the writes commit only if ``owner`` leads
    when they do, however long ago it last renewed; raises ``NotLeader`` otherwise."""
    if not lead(conn, name, owner, now, ttl):
        raise NotLeader(name)
    return fn(conn, *args)


def _header(row: Any) -> Header:
    return Header(int(row.number), row.hash, row.parent_hash, int(row.timestamp))


# --- recorded reorgs ------------------------------------------------------------------


def record_reorg(conn: sa.Connection, chain: str, fork: int, new_hashes: list[str], now: float) -> int:
    """Orphan headers above ``fork``; un-include and flag what stood on them. Returns depth."""
    orphaned = orphan_headers_above(conn, chain, fork)
    if not orphaned:
        return 0
    old = [h.hash for h in orphaned]
    settled_there = sa.and_(submissions.c.chain == chain, submissions.c.block_hash.in_(old),
                            submissions.c.state.in_(SETTLED))
    # the lock order (store): their runs (openers and sharers) first, in id order, then the submissions
    openers = set(conn.execute(
        sa.select(submissions.c.run_id).where(settled_there, submissions.c.run_id.is_not(None))).scalars())
    shared = conn.execute(sa.select(sharers.c.run_id).join(submissions, submissions.c.id == sharers.c.submission_id)
                          .where(settled_there)).scalars()
    store.lock_runs(conn, sorted(openers.union(shared)))
    hit = list(conn.execute(sa.select(submissions).where(settled_there).order_by(submissions.c.id).with_for_update()))
    waiting: dict[int, list[tuple[str, str]]] = {}  # submission id -> (run, step) of each run sharing it
    for row in sharers_of(conn, [s.id for s in hit]):
        waiting.setdefault(int(row.submission_id), []).append((row.run_id, row.step))
    # a batch and its members share one transaction: it is listed once
    affected = list(dict.fromkeys(s.tx_hash for s in hit))
    event_id = conn.execute(
        reorgs.insert().values(
            chain=chain, depth=len(orphaned), fork_number=fork, old_hashes=json.dumps(old),
            new_hashes=json.dumps(new_hashes), affected=json.dumps(affected), detected_at=now,
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    # a final intent's coins are held again: its transaction is no longer in the chain
    conn.execute(reservations.update().where(reservations.c.submission_id.in_([s.id for s in hit]))
                 .values(spent_at_block=None))
    for sub in hit:
        conn.execute(
            submissions.update().where(submissions.c.id == sub.id).values(
                state=SubmissionState.BROADCAST, tx_hash=None, block_number=None, block_hash=None, receipt=None,
                last_broadcast_block=None, updated_at=now,
            )
        )
        if sub.state == SubmissionState.FINAL:
            metrics.inc("chainflow_finality_violations_total", chain=chain)
        reason = f"reorg #{event_id} on {chain}: block {sub.block_number} ({sub.block_hash}) orphaned"
        info = {"reorg": int(event_id), "chain": chain, "depth": len(orphaned), "fork_number": fork,
                "tx_hash": sub.tx_hash, "finality_broken": sub.state == SubmissionState.FINAL}
        for run_id, step in ([(sub.run_id, sub.step)] if sub.run_id else []) + waiting.get(int(sub.id), []):
            # workflows observe reorgs with ctx.wait_for(REORG_SIGNAL)
            store.insert_signal(conn, run_id, REORG_SIGNAL, codec.dumps(info), now)
            if sub.state == SubmissionState.FINAL and store.request_rollback(conn, run_id, step, reason, now):
                metrics.inc("chainflow_rollbacks_total", chain=chain)
    return len(orphaned)


def reorg_events(conn: sa.Connection, chain: str | None, limit: int) -> list[sa.Row[Any]]:
    """Reorg events as the trackers recorded them, newest first (``Chainflow.reorgs``)."""
    q = sa.select(reorgs).order_by(reorgs.c.id.desc()).limit(limit)
    if chain:
        q = q.where(limits.matches(reorgs.c.chain, chain))
    return list(conn.execute(q))


# --- what the dashboard reads (``chainflow ui``) ----------------------------------------


def submission_page(conn: sa.Connection, chain: str | None, state: str | None, before: int | None,
                    limit: int) -> list[sa.Row[Any]]:
    """Submissions newest first (by id), below the ``before`` id: keyset pages."""
    q = sa.select(submissions).order_by(submissions.c.id.desc()).limit(limit)
    if chain:
        q = q.where(limits.matches(submissions.c.chain, chain))
    if state:
        q = q.where(submissions.c.state == state)
    if before is not None:
        q = q.where(submissions.c.id < before)
    return list(conn.execute(q))


def candidates_of(conn: sa.Connection, sub_ids: list[int]) -> list[sa.Row[Any]]:
    """Every signed version of these submissions (id, hash, fees, time; never the raw
    bytes), oldest first: a submission's first candidate and its fee bumps."""
    return _by_chunks(conn, sub_ids, lambda chunk: (
        sa.select(tx_attempts.c.submission_id, tx_attempts.c.tx_hash, tx_attempts.c.fees, tx_attempts.c.created_at)
        .where(tx_attempts.c.submission_id.in_(chunk)).order_by(tx_attempts.c.id)))


def reservations_of(conn: sa.Connection, sub_ids: list[int]) -> list[sa.Row[Any]]:
    """The coins reserved for these submissions (held or recorded as spent)."""
    return _by_chunks(conn, sub_ids, lambda chunk: (
        sa.select(reservations.c.submission_id, reservations.c.outpoint, reservations.c.value,
                  reservations.c.spent_at_block)
        .where(reservations.c.submission_id.in_(chunk)).order_by(reservations.c.outpoint)))


def _by_chunks(conn: sa.Connection, ids: list[int], query: Callable[[list[int]], Any]) -> list[sa.Row[Any]]:
    """``query`` over ``ids`` 500 at a time: a page can name more ids than a backend
    takes as bind parameters in one statement."""
    found: list[sa.Row[Any]] = []
    for i in range(0, len(ids), 500):
        found.extend(conn.execute(query(ids[i:i + 500])))
    return found


def progress_of(conn: sa.Connection, sub_ids: list[int]) -> list[sa.Row[Any]]:
    """(id, chain, state, block_number, finality) of these submissions: what a live
    confirmations bar needs, with the chain's tip (``header_tip``)."""
    return list(conn.execute(
        sa.select(submissions.c.id, submissions.c.chain, submissions.c.state, submissions.c.block_number,
                  submissions.c.finality)
        .where(submissions.c.id.in_(sub_ids))))


def tracked_chains(conn: sa.Connection) -> list[str]:
    """Every chain some tracker stored headers or a submission for."""
    found = set(conn.execute(sa.select(headers.c.chain).distinct()).scalars())
    found.update(conn.execute(sa.select(nonces.c.chain).distinct()).scalars())
    found.update(conn.execute(sa.select(reservations.c.chain).distinct()).scalars())
    return sorted(found)


def leader(conn: sa.Connection, name: str) -> sa.Row[Any] | None:
    """Who holds a leadership lease (``lead``) and until when."""
    return conn.execute(sa.select(leaders).where(leaders.c.name == name)).first()


def runs_of_txs(conn: sa.Connection, chain: str, tx_hashes: list[str]) -> dict[str, str]:
    """tx hash -> the run whose submission signed it (a reorg's affected runs)."""
    found: dict[str, str] = {}
    for i in range(0, len(tx_hashes), 500):
        for r in conn.execute(
            sa.select(tx_attempts.c.tx_hash, submissions.c.run_id)
            .join(submissions, submissions.c.id == tx_attempts.c.submission_id)
            .where(tx_attempts.c.chain == chain, tx_attempts.c.tx_hash.in_(tx_hashes[i:i + 500]),
                   submissions.c.run_id.is_not(None))
        ):
            found[r.tx_hash] = r.run_id
    return found


def confirmation_times(conn: sa.Connection, chain: str, since: float, limit: int) -> list[sa.Row[Any]]:
    """(created_at, updated_at) of final submissions on ``chain`` created since ``since``,
    newest first: a final intent's row is last written when it turned final."""
    return list(conn.execute(
        sa.select(submissions.c.created_at, submissions.c.updated_at)
        .where(submissions.c.chain == chain, submissions.c.state == SubmissionState.FINAL,
               submissions.c.created_at >= since)
        .order_by(submissions.c.id.desc()).limit(limit)))
