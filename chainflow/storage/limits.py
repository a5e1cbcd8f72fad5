"""Names and keys the engine stores, checked where they are given, before anything runs.

The lengths come from the schema's columns, so there is one source of truth: Postgres
refuses a longer value (or one with a NUL character) with a raw ``DataError`` (for a
step, only after the step ran, which then ran again on every recovery) while SQLite
stores it, so without these checks the two backends would disagree.

Slot names (step, sleep, wait_for, submit, branch and gather names) become journal keys
``name#occurrence`` under branch paths ``parent/child``, and compensations are keyed
``compensate:key``; a user name containing a separator or the reserved prefix could
collide with a key the engine derives, so such names are refused rather than encoded
(a refusal reads better in ``chainflow show`` than an escaped key would).
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

from .schema import attempts, journal, leaders, runs, signals, submissions, workers

OCCURRENCE_SEP = "#"  # "pay#2": the third "pay" of a branch
BRANCH_SEP = "/"  # "batch/0xabc": branch paths and step labels
COMPENSATION_PREFIX = "compensate:"
# the keys of the submissions chainflow opens itself, in the same key space as users'
BATCH_KEY_PREFIX = "batch:"  # a payout batch's own row
GAP_FILL_KEY_PREFIX = "gap-fill:"  # the self-transfer burning a nonce
_RESERVED_KEY_PREFIXES = {COMPENSATION_PREFIX: "the keys of compensations' submissions",
                          BATCH_KEY_PREFIX: "the rows of payout batches",
                          GAP_FILL_KEY_PREFIX: "the transactions burning a nonce"}
_OCCURRENCE_ROOM = 10  # "#" and up to 9 digits of occurrence count, kept free in a key


def _length(*columns: sa.Column[Any]) -> int:
    return min(int(c.type.length) for c in columns)  # type: ignore[attr-defined]


KEY_LENGTH = _length(journal.c.key, attempts.c.key)
BRANCH_LENGTH = _length(journal.c.branch, attempts.c.branch)
SIGNAL_LENGTH = _length(signals.c.name)
IDEMPOTENCY_KEY_LENGTH = _length(runs.c.idempotency_key, submissions.c.idempotency_key)
WORKFLOW_NAME_LENGTH = _length(runs.c.workflow)
SUBMISSION_LABEL_LENGTH = _length(submissions.c.step)  # "branch/key" of a ctx.submit
# a worker's id owns run leases, its announcement and its trackers' leadership
WORKER_ID_LENGTH = _length(workers.c.id, runs.c.lease_owner, leaders.c.owner)
# the longest slot name whose every key (occurrence suffix, compensation prefix) fits
NAME_LENGTH = KEY_LENGTH - len(COMPENSATION_PREFIX) - _OCCURRENCE_ROOM
_ORIGIN_DIGEST = 32  # hex characters of the compensated intent's digest in a derived key
# the longest key a compensation's ``ctx.submit`` may give: it is stored under a prefix
COMPENSATION_KEY_LENGTH = IDEMPOTENCY_KEY_LENGTH - len(COMPENSATION_PREFIX) - _ORIGIN_DIGEST - 1


def lookup(value: Any, what: str) -> str:
    """``value`` if it is a str: the id or name a read looks a row up by.  Postgres
    refuses to compare a text column with a number (a raw ``ProgrammingError``, after a
    round trip) where SQLite answers "not found", so the type is checked at the call.
    The value is not: one no write could have stored finds nothing (``unstorable``)."""
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} must be a str, got {value!r}")


def text(value: Any, what: str, limit: int) -> str:
    """``value`` if it is a non-empty str of at most ``limit`` characters, without the
    NUL character Postgres text cannot hold (SQLite stores it)."""
    given = lookup(value, what)  # a str first, as any name a read is by
    if not given:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in given:
        raise ValueError(f"{what} contains a NUL character, which Postgres cannot store: {given[:40]!r}")
    if len(given) > limit:
        raise ValueError(f"{what} is {len(given)} characters long, the limit is {limit}: {given[:40]!r}…")
    return given


def unstorable(value: Any) -> bool:
    """Whether ``value`` is a str no write can have stored: one holding a NUL (``text``
    refuses it wherever a name or key is given).  A lookup by one finds nothing, and
    says so without asking the database: Postgres refuses even to compare text with a
    NUL (a raw ``DataError``, where SQLite answers "not found"), and refusing it with
    an error of ours instead would tell a caller passing on an id it was handed (a URL,
    a form, a log line) less than "no such run", in a way no other absent id does."""
    return isinstance(value, str) and "\x00" in value


def matches(column: sa.ColumnElement[Any], value: Any) -> sa.ColumnElement[bool]:
    """``column == value`` in a lookup: false outright for a value that cannot be
    stored (``unstorable``), so the lookup finds nothing alike on both backends."""
    return sa.false() if unstorable(value) else column == value


def slot_name(value: Any, kind: str) -> str:
    """A user-given name of a ``kind`` slot ("step", "branch"...), which must not look like
    a key the engine derives.  Called for every step: the common case is one expression."""
    if type(value) is str and 0 < len(value) <= NAME_LENGTH and OCCURRENCE_SEP not in value \
            and BRANCH_SEP not in value and "\x00" not in value and not value.startswith(COMPENSATION_PREFIX):
        return value
    what = f"{kind} name"
    text(value, what, NAME_LENGTH)
    for sep in (OCCURRENCE_SEP, BRANCH_SEP):
        if sep in value:
            raise ValueError(f"{what} {value!r} contains {sep!r}, which chainflow reserves for the journal keys "
                             "it derives (repeated names, branch paths)")
    raise ValueError(f"{what} {value!r} starts with {COMPENSATION_PREFIX!r}, which chainflow reserves "
                     "for compensation keys")


def label(branch: str, key: str) -> str:
    """``branch/key``, or the key at the top: how errors, events, submissions and child
    keys name an operation, alike live and on replay."""
    return f"{branch}{BRANCH_SEP}{key}" if branch else key


def stored_step_label(step: str | None) -> str | None:
    """A submission's step as stored ("branch\x1fkey": the unit separator, which no
    name holds, keeps the two apart) as ``label`` names it for an operator; None for
    the rows no step opened (a payout batch's, a gap fill's)."""
    if step is None:
        return None
    branch, _, key = step.partition("\x1f")
    return label(branch, key)


def compensation_branch(branch: str, key: str) -> str:
    """The branch path a compensation that takes a context runs in: under the branch of
    the slot it compensates, named ``compensate:<key>``, which no user branch can be
    (user names may not start with the prefix), so its steps never share a slot."""
    return label(branch, f"{COMPENSATION_PREFIX}{key}")


def in_compensation(branch: str) -> bool:
    """Whether a journal branch path lies inside a compensation's branch."""
    return branch.startswith(COMPENSATION_PREFIX) or f"{BRANCH_SEP}{COMPENSATION_PREFIX}" in branch


def idempotency_key(value: Any, what: str) -> str:
    """A forward submission's key, which must not use the prefix of keys chainflow
    makes: a user's "batch:7" would otherwise find a batch's row and complete with
    its receipt, unpaid, or take the key the next batch needs."""
    text(value, what, IDEMPOTENCY_KEY_LENGTH)
    for prefix, purpose in _RESERVED_KEY_PREFIXES.items():
        if value.startswith(prefix):
            raise ValueError(f"{what} {value[:60]!r} starts with {prefix!r}, which chainflow reserves for {purpose}")
    return value  # type: ignore[no-any-return]


def compensation_key(origin: str, key: Any, what: str) -> str:
    """The idempotency key of a submission made by a compensation: ``key`` namespaced
    under a digest of the compensated intent (``origin``).  The prefix is refused on
    forward keys and the digest has a fixed length, so a derived key can equal neither
    a forward submission's key nor the key of another intent's compensation."""
    text(key, what, COMPENSATION_KEY_LENGTH)
    digest = hashlib.sha256(origin.encode()).hexdigest()[:_ORIGIN_DIGEST]
    return f"{COMPENSATION_PREFIX}{digest}:{key}"


def child_key(parent_id: str, label: str) -> str:
    """The idempotency key of the child run a parent starts at slot ``label``
    ("branch/key"): ``child:<parent id>:<label>``, or a digest of the label where that
    would not fit.  A user key cannot take it unknowingly: it names the parent's id."""
    key = f"child:{parent_id}:{label}"
    if len(key) + 4 > IDEMPOTENCY_KEY_LENGTH:  # room for the "@n" of a rolled-back slot's next child
        key = f"child:{parent_id}:{hashlib.sha256(label.encode()).hexdigest()}"
    return key
