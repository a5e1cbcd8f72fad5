"""Settling a commit whose reply was lost.

When the connection breaks after a write was sent, the server may have committed it
(the reply was lost on the way back) or not (the request, or the server, died first).
Retrying blindly would apply a committed write twice (a unique slot answers
``IntegrityError``, which a step would take for its own failure); giving up would
fail a step that succeeded.  So the committer asks the database how it ended:

* A group-commit batch on Postgres is ONE autocommit statement (``entrywriter``): its
  transaction id is in the reply that was lost, so it cannot be asked about.  What is
  known is the server process that ran it (``server_process``, read once per
  connection).  Once that process is terminated and gone, its statement has ended one
  way or the other (and nothing still in flight can reach it), and the batch's writes carry their own evidence: journal rows identical to ours in
  every column (same slot, same payload, same timestamps; only the fence holder
  writes a run's journal, so an identical row is ours), new runs with our fresh ids,
  finishes with our values.  The batch is one transaction: any evidence means all of
  it committed, and then an item with writes but no evidence is one whose fence had
  failed in that transaction (LeaseLostError, as the lost answer would have said).
  Re-checking the fences now would not do: a fence can have moved after the commit.
* A batch with closures runs in a transaction of several statements: its id
  (``pg_current_xact_id()``) is read before COMMIT is sent, and ``pg_xact_status``
  answers exactly ('committed' / 'aborted' / 'in progress': wait).

When the database cannot answer (unreachable, still busy past ``PATIENCE``),
``OutcomeUnknown`` tells the committer to write nothing more for that batch: its runs'
executions are abandoned (another worker replays them from the journal after the
lease), never failed, never re-applied.

SQLite needs none of this: a local file has no lost replies (a commit that raises did
not commit), so these paths are for Postgres only.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from ..states import RunState
from . import store
from .schema import journal, runs

PATIENCE = 5.0  # s to wait for a lost statement's server process to finish it
_POLL = 0.02


class OutcomeUnknown(Exception):
    """A batch's commit may or may not have happened, and the database cannot tell yet."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"commit outcome unknown after: {cause}")
        self.cause = cause


def reply_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is the connection breaking (no answer from the server), as
    opposed to the server refusing the statement (then it did not commit).  Server
    errors carry a SQLSTATE; a broken link has none (or class 08)."""
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    return state is None or str(state).startswith("08")


def server_process(dbapi: Any) -> tuple[int, str]:
    """Who runs a psycopg connection's statements on the server: (pid, start time).
    Read once per connection (a pid alone could be reused by another session)."""
    with dbapi.cursor() as cursor:
        cursor.execute("SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        pid, started = cursor.fetchone()
    return int(pid), str(started)


def _end_process(conn: sa.Connection, process: tuple[int, str]) -> None:
    """Terminate the server process of a broken connection and return once it is gone:
    from then on no statement of it can commit, not even one still in flight on the
    network.  Terminating aborts a statement still running (the read-back then finds
    nothing and the batch is retried); one already committing finishes its commit."""
    pid, started = process
    params = {"pid": pid, "started": started}
    where = "WHERE pid = :pid AND backend_start::text = :started"
    conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity {where}"), params)
    conn.commit()
    until = time.monotonic() + PATIENCE
    while True:
        alive = conn.execute(sa.text(f"SELECT 1 FROM pg_stat_activity {where}"), params).first()
        conn.commit()  # a fresh statistics snapshot for the next look
        if alive is None:
            return
        if time.monotonic() > until:
            raise TimeoutError(f"server process {pid} still alive {PATIENCE}s after its termination")
        time.sleep(_POLL)


def settle_batch(engine: sa.Engine, process: tuple[int, str], lost: BaseException,
                 rows: list[dict[str, Any]], new_runs: list[dict[str, Any]], finishes: list[store.RunFinish],
                 ) -> tuple[set[str], set[str], dict[str, store.RunRow]]:
    """The answer a lost one-statement batch would have given (runs still ours, runs
    created, finished rows), read back from the tables.  Raises ``lost`` when nothing
    of the batch committed (the ordinary retry applies), ``OutcomeUnknown`` when the
    database cannot tell."""
    try:
        with engine.connect() as conn:
            _end_process(conn, process)
            found = _evidence(conn, rows, new_runs, finishes)
    except Exception as exc:  # noqa: BLE001 - whatever stops the read-back, the outcome stays unknown
        raise OutcomeUnknown(lost) from exc
    created, written_runs, finished = found
    if not (created or written_runs or finished):
        raise lost
    return written_runs | set(finished), created, finished


def _evidence(conn: sa.Connection, rows: list[dict[str, Any]], new_runs: list[dict[str, Any]],
              finishes: list[store.RunFinish]) -> tuple[set[str], set[str], dict[str, store.RunRow]]:
    """(new runs present, runs whose every journal row is present as ours, finishes
    present as ours with the row as it stands)."""
    created: set[str] = set()
    if new_runs:
        ids = [r["id"] for r in new_runs]
        created = set(conn.execute(sa.select(runs.c.id).where(runs.c.id.in_(ids))).scalars())
    return created, durable_runs(conn, rows), _finished(conn, finishes)


def durable_runs(conn: sa.Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Runs of which every row of ``rows`` is in the journal, identical in every
    column we write (superseded or not: a reorg may have invalidated it since)."""
    if not rows:
        return set()
    wanted = {(r["run_id"], r["branch"], r["key"]) for r in rows}
    present: set[tuple[Any, ...]] = set()
    columns = [journal.c[c] for c in store.ENTRY_COLUMNS]
    for run_id in {r["run_id"] for r in rows}:  # the slot index leads with run_id
        query = sa.select(*columns).where(journal.c.run_id == run_id)
        present.update(tuple(r) for r in conn.execute(query) if (r.run_id, r.branch, r.key) in wanted)
    missing = {r["run_id"] for r in rows if tuple(r.get(c) for c in store.ENTRY_COLUMNS) not in present}
    return {r["run_id"] for r in rows} - missing


def _finished(conn: sa.Connection, finishes: list[store.RunFinish]) -> dict[str, store.RunRow]:
    """Finishes that were applied, with their run's row.  A finish sets ``updated_at``
    to its own time and clears the lease; the run then holds our status, output and
    error, or is reopened (pending, rollback set) if a reorg came first."""
    if not finishes:
        return {}
    by_id = {f.run_id: f for f in finishes}
    found: dict[str, store.RunRow] = {}
    for row in conn.execute(sa.select(runs).where(runs.c.id.in_(list(by_id)))):
        f = by_id[row.id]
        ours = (row.status, row.output, row.error) == (f.status, f.output, f.error) \
            or (row.status == RunState.PENDING and row.rollback is not None)
        if ours and row.updated_at == f.now and row.lease_owner is None:
            found[row.id] = store.RunRow(*row)
    return found


def transaction_id(conn: sa.Connection) -> str | None:
    """The id of ``conn``'s open transaction, read before COMMIT is sent so a lost
    COMMIT reply can be settled by ``transaction_committed``; None on SQLite, whose
    commit on a local file has no reply to lose."""
    if conn.dialect.name != "postgresql":
        return None
    return str(conn.exec_driver_sql("SELECT pg_current_xact_id()::text").scalar_one())


def transaction_committed(engine: sa.Engine, xid: str, lost: BaseException) -> None:
    """Return if transaction ``xid`` committed; raise ``lost`` if it aborted (the
    ordinary retry applies), ``OutcomeUnknown`` if the database cannot tell."""
    until = time.monotonic() + PATIENCE
    try:
        with engine.connect() as conn:
            while True:
                status = conn.execute(sa.text("SELECT pg_xact_status(CAST(:xid AS xid8))"), {"xid": xid}).scalar()
                conn.commit()
                if status != "in progress" or time.monotonic() > until:
                    break
                time.sleep(_POLL)
    except Exception as exc:  # noqa: BLE001 - no answer: the outcome stays unknown
        raise OutcomeUnknown(lost) from exc
    if status == "committed":
        return
    if status == "aborted":
        raise lost
    raise OutcomeUnknown(lost)
