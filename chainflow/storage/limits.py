"""Names and keys the engine stores, checked where they are given, before anything runs.

The lengths come from the schema's columns, so there is one source of truth: Postgres
refuses a longer value with a raw ``DataError`` (for a step, only after the step ran)
while SQLite stores it, so without these checks the two backends would disagree.

Slot names (step, sleep, wait_for, submit, branch and gather names) become journal keys
``name#occurrence`` under branch paths ``parent/child``, and compensations are keyed
``compensate:key``; a user name containing a separator or the reserved prefix could
collide with a key the engine derives, so such names are refused rather than encoded
(a refusal reads better in ``chainflow show`` than an escaped key would).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .schema import attempts, journal, runs, signals, submissions

OCCURRENCE_SEP = "#"  # "pay#2": the third "pay" of a branch
BRANCH_SEP = "/"  # "batch/0xabc": branch paths and step labels
COMPENSATION_PREFIX = "compensate:"
_OCCURRENCE_ROOM = 10  # "#" and up to 9 digits of occurrence count, kept free in a key


def _length(*columns: sa.Column[Any]) -> int:
    return min(int(c.type.length) for c in columns)  # type: ignore[attr-defined]


KEY_LENGTH = _length(journal.c.key, attempts.c.key)
BRANCH_LENGTH = _length(journal.c.branch, attempts.c.branch)
SIGNAL_LENGTH = _length(signals.c.name)
IDEMPOTENCY_KEY_LENGTH = _length(runs.c.idempotency_key, submissions.c.idempotency_key)
WORKFLOW_NAME_LENGTH = _length(runs.c.workflow)
SUBMISSION_LABEL_LENGTH = _length(submissions.c.step)  # "branch/key" of a ctx.submit
# the longest slot name whose every key (occurrence suffix, compensation prefix) fits
NAME_LENGTH = KEY_LENGTH - len(COMPENSATION_PREFIX) - _OCCURRENCE_ROOM


def text(value: Any, what: str, limit: int) -> str:
    """``value`` if it is a non-empty str of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {value!r}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long, the limit is {limit}: {value[:40]!r}…")
    return value


def slot_name(value: Any, kind: str) -> str:
    """A user-given name of a ``kind`` slot ("step", "branch"...), which must not look like
    a key the engine derives.  Called for every step: the common case is one expression."""
    if type(value) is str and 0 < len(value) <= NAME_LENGTH and OCCURRENCE_SEP not in value \
            and BRANCH_SEP not in value and not value.startswith(COMPENSATION_PREFIX):
        return value
    what = f"{kind} name"
    text(value, what, NAME_LENGTH)
    for sep in (OCCURRENCE_SEP, BRANCH_SEP):
        if sep in value:
            raise ValueError(f"{what} {value!r} contains {sep!r}, which chainflow reserves for the journal keys "
                             "it derives (repeated names, branch paths)")
    raise ValueError(f"{what} {value!r} starts with {COMPENSATION_PREFIX!r}, which chainflow reserves "
                     "for compensation keys")
