"""The states the engine stores: of a run, of a journal entry, of an on-chain submission.

Each is a ``StrEnum`` whose values are the exact texts in the tables, so stored rows,
SQL comparisons and the drivers' parameters are what they were with string literals
(no migration): a member binds as its text with sqlite3 and psycopg, and compares
equal to the plain ``str`` a query returns.  Rows the engine reads on its hot paths
(replay, group commit) keep that plain text and are compared against members; what
the client API returns is turned into members.

Python 3.11 looks attributes of an Enum class up through ``EnumType.__getattr__``
(about 100 ns, against a few for a constant): code that runs once per step binds the
members it needs at import instead of writing ``EntryState.OK`` in the loop.

Imports nothing from chainflow: the storage layer and everything above it use it.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """``cf_runs.status``."""

    PENDING = "pending"  # due at ``ready_at`` for a claim (new, released, reopened or retried)
    RUNNING = "running"  # leased by a worker
    SLEEPING = "sleeping"  # parked until a time
    WAITING = "waiting"  # parked until a signal (or its timeout)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # given up after too many recoveries; ends like the others (no wake-up, signal or
    # cancel reaches it) but an operator may ``retry`` it
    DEAD_LETTERED = "dead_lettered"


def run_state(value: RunState | str, what: str) -> RunState:
    """``value`` (a ``RunState`` or its text) as a member, or a ValueError naming
    ``what`` and the states: a filter by a status no run has would answer nothing."""
    try:
        return RunState(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {', '.join(RunState)}, got {value!r}") from None


# a tuple, not a set: it binds as an IN list, and a tuple keeps the parameters in one order
TERMINAL: tuple[RunState, ...] = (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.DEAD_LETTERED)


class EntryState(StrEnum):
    """``cf_journal.status``, and ``JournalEntry.status``."""

    OK = "ok"
    ERROR = "error"  # the step failed for good (its last attempt's error is kept)
    PENDING = "pending"  # a ``wait_for`` still waiting
    TIMEOUT = "timeout"  # a ``wait_for`` whose timeout passed
    # never stored: what the client API reports for a row a reorg rollback superseded
    INVALIDATED = "invalidated"


class SubmissionState(StrEnum):
    """``cf_submissions.state``; see the diagram in ``submission``."""

    INTENT = "intent"  # bound to its idempotency key, nothing else yet
    QUEUED = "queued"  # checked, waiting for the chain's batcher to put it in a batch (UTXO chains)
    ALLOCATED = "allocated"  # holds its conflict domain (a nonce, reserved coins), not yet signed
    SIGNED = "signed"  # signed bytes are durable; may or may not have been sent
    BROADCAST = "broadcast"  # sent at least once (or sent back here by a reorg)
    INCLUDED = "included"  # mined, finality policy not yet met
    FINAL = "final"
    FAILED = "failed"  # reverted, refused, or its nonce taken by a foreign transaction
