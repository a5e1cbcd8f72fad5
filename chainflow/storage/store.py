"""Every read and write the engine makes, as plain functions over a connection.

Writes that belong to a claimed run are *fenced*: they go through ``fences_ok`` in the
same transaction, which fails once another worker has re-claimed the run (its fence
token moved on).  On Postgres the fencing read also share-locks the run, so a claim
and a late write from the previous owner serialise.

Lock order (Postgres): a transaction that locks several ``cf_runs`` rows takes them in
ascending id order, with one statement whose ORDER BY id sits under the lock (``FOR
SHARE`` / ``FOR NO KEY UPDATE``: rows are locked as the sort hands them out), before
any UPDATE of several rows (an UPDATE locks in whatever order its plan visits them).
So does the fence read, the group commit's one statement (``entrywriter``), the
heartbeat, the hand-back of held runs, a cancel with the runs below it
(``cancel_runs``), a child's finish with its parent (``finish_child``), a batch of
signals (``insert_signals``: the tracker's finalised submissions) and the reorg
(``chainstore.record_reorg``); the claim locks with SKIP LOCKED and never waits;
suspend locks one run.  A fenced commit locks only its own run: what must
lock a child with its parent goes through a transaction of its own.  Runs
are locked before submissions (a step locks its run's fence, then its submission).
Two transactions taking locks in one order can wait for each other but never in a
circle: no deadlock between heartbeats and commits.
"""

from __future__ import annotations

import collections
import functools
import json
import typing
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ..states import TERMINAL, EntryState, RunState
from . import limits
from .schema import attempts, journal, runs, signals, workers


@dataclass(frozen=True)
class Claim:
    run_id: str
    workflow: str
    input: str
    fence: int
    cancel_requested: bool
    deadline: float | None
    created_at: float
    rollback: str | None = None
    claims: int = 1  # how many times the run was claimed, this one included
    recoveries: int = 0  # of those claims, how many took it over from an expired lease or a crash
    parent_id: str | None = None  # a fork's source: its journal holds the parent's copied entries
    overrides: str | None = None  # a fork's swapped code (``runtime.overrides.Overrides`` JSON)
    parent_slot: str | None = None  # a child run's slot in its parent (``parent_id``); None for a fork
    # the failure a run parked while compensating (``suspend_run``): its execution only
    # finishes those compensations and ends failed with it
    failure: str | None = None


@dataclass
class Entry:
    """One live journal row, as replay needs it."""

    id: int
    branch: str
    position: int
    key: str
    kind: str
    status: str  # an EntryState's text, as read: replay compares it with members, never converts
    output: str | None
    error: str | None
    attempts: int


@dataclass(frozen=True)
class Slot:
    """Where an operation of a run is journaled: its branch, its position in the
    branch, its key (name#occurrence), and the live entry already there, if any."""

    branch: str
    position: int
    key: str
    entry: Entry | None

    @property
    def label(self) -> str:
        return limits.label(self.branch, self.key)


@dataclass(frozen=True)
class AttemptRow:
    attempt: int
    error: str | None
    next_at: float | None


# --- runs -----------------------------------------------------------------------


def run_row(
    *,
    workflow: str,
    input_text: str,
    input_hash: str,
    idempotency_key: str | None,
    deadline: float | None,
    now: float,
    lease_owner: str | None = None,
    lease_until: float | None = None,
) -> dict[str, Any]:
    """A new run, due now; with ``lease_owner`` it is born claimed by that worker (the
    in-process fast path: no separate claim transaction)."""
    claimed = lease_owner is not None
    return dict(
        id=str(uuid.uuid4()),
        workflow=workflow,
        status=RunState.RUNNING if claimed else RunState.PENDING,
        input=input_text,
        input_hash=input_hash,
        idempotency_key=idempotency_key,
        deadline=deadline,
        created_at=now,
        updated_at=now,
        ready_at=lease_until if claimed else now,
        lease_owner=lease_owner,
        lease_expires=lease_until,
        fence=1 if claimed else 0,
        attempt_count=1 if claimed else 0,
        cancel_requested=False,
    )


NEW_RUN_COLUMNS = tuple(run_row(workflow="", input_text="", input_hash="", idempotency_key=None, deadline=None,
                                 now=0.0))


def insert_run(conn: sa.Connection, **fields: Any) -> str:
    row = run_row(**fields)
    conn.execute(_INSERT_RUN, row)
    return str(row["id"])


_INSERT_RUN = runs.insert()
_RUN_BY_ID = sa.select(runs).where(runs.c.id == sa.bindparam("rid"))
_RUN_BY_KEY = sa.select(runs).where(runs.c.idempotency_key == sa.bindparam("b_key"))
_COMPENSATIONS = (
    sa.select(journal.c.branch, journal.c.key, journal.c.status)
    .where(journal.c.run_id == sa.bindparam("rid"), journal.c.kind == "compensation", journal.c.superseded == 0)
    .order_by(journal.c.id)  # the order they ran in
)


def compensations(conn: sa.Connection, run_id: str) -> dict[str, EntryState]:
    """Live compensation outcomes of a run, labelled "branch/step"."""
    return {
        "/".join(filter(None, (r.branch, r.key.removeprefix("compensate:")))): EntryState(r.status)
        for r in conn.execute(_COMPENSATIONS, {"rid": run_id})
    }


def run_by_key(conn: sa.Connection, key: str) -> sa.Row[Any] | None:
    if limits.unstorable(key):
        return None
    return conn.execute(_RUN_BY_KEY, {"b_key": key}).first()


def get_run(conn: sa.Connection, run_id: str) -> sa.Row[Any] | None:
    if limits.unstorable(run_id):
        return None
    return conn.execute(_RUN_BY_ID, {"rid": run_id}).first()


def list_runs(
    conn: sa.Connection, status: str | None, workflow: str | None, limit: int, *, since: float | None = None,
    until: float | None = None, before: tuple[float, str] | None = None,
) -> list[sa.Row[Any]]:
    """Newest first by (created_at, id), created in [since, until) when given, and below
    the ``before`` cursor (the last run of the previous page): keyset pagination, so
    every page is one range of ``ix_cf_runs_created`` (or its status / workflow twin)
    however deep it lies, where an OFFSET would walk every row above it."""
    q = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
    if status:
        q = q.where(runs.c.status == status)
    if workflow:
        q = q.where(limits.matches(runs.c.workflow, workflow))
    if since is not None:
        q = q.where(runs.c.created_at >= since)
    if until is not None:
        q = q.where(runs.c.created_at < until)
    if before is not None:
        q = q.where(sa.tuple_(runs.c.created_at, runs.c.id) < sa.tuple_(*before))
    return list(conn.execute(q))


def forks_of(conn: sa.Connection, run_id: str) -> list[sa.Row[Any]]:
    """The runs forked from ``run_id`` (``parent_id``, no slot: not its children), oldest first."""
    return list(conn.execute(sa.select(runs).where(limits.matches(runs.c.parent_id, run_id),
                                                   runs.c.parent_slot.is_(None))
                             .order_by(runs.c.created_at, runs.c.id)))


def _bucket(conn: sa.Connection, column: sa.ColumnElement[float], width: float) -> sa.ColumnElement[int]:
    """``floor(column / width)``: SQLite has no floor() everywhere, and its integer cast
    truncates (the times are positive); Postgres' cast rounds, so it floors first."""
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.func.floor(column / width), sa.BigInteger)
    return sa.cast(column / width, sa.Integer)


def run_counts(conn: sa.Connection, since: float, width: float) -> list[sa.Row[Any]]:
    """(bucket, status, n): runs created since ``since`` per ``width`` seconds (bucket
    = floor(created_at / width)) and current status; a range of ``ix_cf_runs_created``."""
    bucket = _bucket(conn, runs.c.created_at, width).label("bucket")
    return list(conn.execute(
        sa.select(bucket, runs.c.status, sa.func.count().label("n"))
        .where(runs.c.created_at >= since).group_by(bucket, runs.c.status)))


def step_timings(conn: sa.Connection, since: float, limit: int) -> list[sa.Row[Any]]:
    """(key, status, started_at, finished_at) of the finished steps of the newest runs
    created since ``since``, at most ``limit`` rows: the journal has no time index (one
    more page per step to write), so the runs' creation index leads."""
    return list(conn.execute(
        sa.select(journal.c.key, journal.c.status, journal.c.started_at, journal.c.finished_at)
        .select_from(runs.join(journal, journal.c.run_id == runs.c.id))
        .where(runs.c.created_at >= since, journal.c.kind == "step", journal.c.finished_at.is_not(None),
               journal.c.started_at.is_not(None))
        .order_by(runs.c.created_at.desc()).limit(limit)))


def _claim_statement(lock_rows: bool) -> sa.Update:
    """Built once per dialect: the workflows a worker serves are an expanding parameter."""
    due = (
        sa.select(runs.c.id)
        .where(runs.c.ready_at <= sa.bindparam("now"), runs.c.status.not_in(TERMINAL),
               runs.c.workflow.in_(sa.bindparam("workflows", expanding=True)))
        .order_by(runs.c.ready_at)
        .limit(sa.bindparam("lim", type_=sa.Integer, literal_execute=True))
    )
    if lock_rows:
        due = due.with_for_update(skip_locked=True)
    return (
        runs.update()
        .where(runs.c.id.in_(due.scalar_subquery()))
        .values(
            status=RunState.RUNNING,
            lease_owner=sa.bindparam("owner"),
            lease_expires=sa.bindparam("until"),
            ready_at=sa.bindparam("until"),
            fence=runs.c.fence + 1,
            updated_at=sa.bindparam("now"),
            attempt_count=runs.c.attempt_count + 1,
            # a lease still recorded means its holder never let go (killed, hung, cut
            # off): every clean exit (finish, suspend, close, reorg reopen) clears it
            recoveries=runs.c.recoveries + sa.case((runs.c.lease_owner.is_not(None), 1), else_=0),
        )
        .returning(
            runs.c.id, runs.c.workflow, runs.c.input, runs.c.fence,
            runs.c.cancel_requested, runs.c.deadline, runs.c.created_at, runs.c.rollback, runs.c.attempt_count,
            runs.c.recoveries, runs.c.parent_id, runs.c.overrides, runs.c.parent_slot, runs.c.error,
        )
    )


_CLAIM = {False: _claim_statement(False), True: _claim_statement(True)}


def claim(
    conn: sa.Connection, owner: str, limit: int, now: float, lease: float, *, workflows: Collection[str]
) -> list[Claim]:
    """Lease up to ``limit`` due runs of ``workflows`` (those the worker can execute: a
    run of another workflow stays due for a worker that has it); Postgres skips rows
    other workers hold."""
    if not workflows:
        return []
    stmt = _CLAIM[conn.dialect.name == "postgresql"]
    params = {"now": now, "lim": limit, "owner": owner, "until": now + lease, "workflows": list(workflows)}
    return [Claim(*row) for row in conn.execute(stmt, params)]


History = tuple[list["Entry"], dict[tuple[str, str], list["AttemptRow"]]]


def claim_with_history(
    conn: sa.Connection, owner: str, limit: int, now: float, lease: float, workflows: Collection[str]
) -> list[tuple[Claim, History]]:
    """Claim and load what replay needs in one transaction (one commit per claim batch)."""
    claims = claim(conn, owner, limit, now, lease, workflows=workflows)
    # a run claimed for the first time has no journal yet (a fork's holds its copied
    # entries from birth, a child's nothing): skip the reads
    known = [c.run_id for c in claims if c.claims > 1 or (c.parent_id is not None and c.parent_slot is None)]
    histories = load_histories(conn, known) if known else {}
    return [(c, histories.get(c.run_id, ([], {}))) for c in claims]


_RENEW = runs.update().where(runs.c.id.in_(sa.bindparam("ids", expanding=True))).values(
    lease_expires=sa.bindparam("until"), ready_at=sa.bindparam("until"))


def heartbeat(
    conn: sa.Connection, owner: str, held: dict[str, int], now: float, lease: float
) -> dict[str, bool]:
    """Extend leases; returns {run_id: cancel_requested} for runs still ours."""
    if not held:
        return {}
    rows = lock_runs(conn, list(held), "fence", "cancel_requested", "lease_owner")
    ours = [r.id for r in rows if r.lease_owner == owner]
    if ours:
        conn.execute(_RENEW, {"ids": ours, "until": now + lease})
    return {r.id: bool(r.cancel_requested) for r in rows if r.lease_owner == owner and r.fence == held[r.id]}


def lock_runs(conn: sa.Connection, ids: list[str], *columns: str) -> list[sa.Row[Any]]:
    """Lock the runs ``ids`` for update in id order (the module's lock order) and read
    their ``columns`` (names); do this before an UPDATE of several runs.  SQLite: the
    transaction already holds the database's write lock."""
    if not ids:
        return []
    return list(conn.execute(_lock_statement(columns), {"ids": ids}))


@functools.cache
def _lock_statement(columns: tuple[str, ...]) -> sa.Select[Any]:
    """Built once per set of columns read: every heartbeat locks its runs."""
    return (sa.select(runs.c.id, *(runs.c[name] for name in columns))
            .where(runs.c.id.in_(sa.bindparam("ids", expanding=True))).order_by(runs.c.id)
            .with_for_update(key_share=True))


def release_runs(conn: sa.Connection, ids: list[str], owner: str, now: float) -> None:
    """Hand runs a closing worker still holds back to the queue, due now: others need
    not wait for the lease to expire."""
    lock_runs(conn, ids)  # in the lock order, before updating several runs
    conn.execute(
        runs.update()
        .where(runs.c.id.in_(ids), runs.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires=None, status=RunState.PENDING, ready_at=now)
    )


# hot-path statements are built once: constructing a Core statement costs more than
# executing it on SQLite
ENTRY_COLUMNS = ("run_id", "branch", "position", "key", "kind", "status", "output", "error", "attempts",
                  "started_at", "finished_at")


@functools.lru_cache(maxsize=256)
def _hot_sql(paramstyle: str, kind: str, rows: int) -> str:
    """The statements every step and finish make, as DBAPI text for ``rows`` runs or
    entries: through the cursor they cost a fraction of a Core execution, and the group
    commit runs each once per batch."""
    mark = _mark(paramstyle)
    if kind == "finish":  # named: the status is read more than once
        status, output, error, now, run_id = (f":{n}" if paramstyle in ("qmark", "named") else f"%({n})s"
                                              for n in ("status", "output", "error", "now", "id"))
        return (f"UPDATE {runs.name} SET {finish_set(status, output, error, now)} WHERE id = {run_id} "
                f"RETURNING {', '.join(RUN_COLUMNS)}")
    if kind == "fence":
        # by id alone: SQLite plans a row-value IN over several pairs as a scan of the
        # whole table.  SQLite: the transaction already holds the database's write lock.
        # Postgres: FOR SHARE makes a re-claim (an UPDATE of the fence) wait for this
        # commit; ORDER BY id under it keeps the lock order (module docstring)
        if paramstyle == "qmark":
            return f"SELECT id, fence FROM {runs.name} WHERE id IN ({', '.join([mark] * rows)})"
        # one array parameter: the same text for every batch, which psycopg parses once
        return f"SELECT id, fence FROM {runs.name} WHERE id = ANY({mark}) ORDER BY id FOR SHARE"
    one = f"({', '.join([mark] * len(ENTRY_COLUMNS))})"
    return f"INSERT INTO {journal.name} ({', '.join(ENTRY_COLUMNS)}) VALUES {', '.join([one] * rows)}"


def _mark(paramstyle: str) -> str:
    return "?" if paramstyle == "qmark" else "%s"


def _dbapi_execute(dbapi: Any, sql: str, params: list[Any] | dict[str, Any]) -> list[Any]:
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []
    finally:
        cursor.close()


def fences_ok(dbapi: Any, paramstyle: str, fences: dict[str, int]) -> set[str]:
    """The runs of ``fences`` (run id -> fence token) still ours, in one statement that
    keeps them ours until the commit: a claim and a late write from the previous owner
    serialise.  Reads only: a page written per commit is a page more to fsync.

    ``dbapi`` is the driver's connection, in the transaction to fence."""
    if not fences:
        return set()
    ids = sorted(fences)  # the same lock order in every worker
    qmark = paramstyle == "qmark"
    rows = _dbapi_execute(dbapi, _hot_sql(paramstyle, "fence", len(ids) if qmark else 0), ids if qmark else [ids])
    return {run_id for run_id, fence in rows if fences[run_id] == fence}


def insert_entries(dbapi: Any, paramstyle: str, rows: list[dict[str, Any]]) -> None:
    for chunk in range(0, len(rows), 256):  # under SQLite's limit on bound parameters
        part = rows[chunk:chunk + 256]
        params = [row.get(c) for row in part for c in ENTRY_COLUMNS]
        _dbapi_execute(dbapi, _hot_sql(paramstyle, "insert", len(part)), params)


def insert_runs(dbapi: Any, paramstyle: str, rows: list[dict[str, Any]]) -> set[str]:
    """Insert new runs, skipping any whose idempotency key exists; returns the ids
    inserted (the caller answers the others through the ordinary start)."""
    if not rows:
        return set()
    mark = _mark(paramstyle)
    columns = list(rows[0])
    one = f"({', '.join([mark] * len(columns))})"
    sql = (f"INSERT INTO {runs.name} ({', '.join(columns)}) VALUES {', '.join([one] * len(rows))} "
           f"ON CONFLICT DO NOTHING RETURNING id")
    return {r[0] for r in _dbapi_execute(dbapi, sql, [row[c] for row in rows for c in columns])}


class RunInsert:
    """A new run to insert through the group commit (a start in a worker's process)."""

    __slots__ = ("row",)

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row


class EntryInsert:
    """A journal row to insert: data, not a closure, so a group commit can write all of
    a batch's rows with one multi-row INSERT."""

    __slots__ = ("row",)

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row


class RunFinish:
    """A run's final write, as data: the group commit sends it with other runs' rows in
    one statement (on Postgres, one round trip for the whole batch)."""

    __slots__ = ("run_id", "status", "output", "error", "now")

    def __init__(self, run_id: str, status: RunState, output: str | None, error: str | None, now: float) -> None:
        self.run_id, self.status, self.output, self.error, self.now = run_id, status, output, error, now


class Exec:
    """A statement whose result nobody reads.  A group commit runs those of one
    statement across its batch's runs as one executemany after the closures (psycopg
    pipelines it: one round trip for the batch, not one per run); anywhere else it is
    a closure like the others."""

    __slots__ = ("params", "statement")

    def __init__(self, statement: sa.Executable, params: dict[str, Any]) -> None:
        self.statement, self.params = statement, params

    def __call__(self, conn: sa.Connection) -> None:
        conn.execute(self.statement, self.params)


def execute_all(conn: sa.Connection, execs: list[Exec]) -> None:
    """``execs`` in one executemany per statement, in order of first appearance."""
    grouped: dict[int, tuple[sa.Executable, list[dict[str, Any]]]] = {}
    for op in execs:  # keyed by identity: a statement's == builds SQL
        grouped.setdefault(id(op.statement), (op.statement, []))[1].append(op.params)
    for statement, params in grouped.values():
        conn.execute(statement, params)


class Query:
    """A statement whose rows its run reads, ``shape(rows)`` being the op's result.  A
    group commit on Postgres sends the queries its runs open their writes with in one
    pipeline (``run_queries``: one round trip for the batch, not one per run); anywhere
    else it is a closure like the others.  Built from statements built once (the
    compiled text is kept per statement)."""

    __slots__ = ("params", "shape", "statement")

    def __init__(self, statement: sa.Executable, params: dict[str, Any],
                 shape: Callable[[Sequence[Any]], Any]) -> None:
        self.statement, self.params, self.shape = statement, params, shape

    def __call__(self, conn: sa.Connection) -> Any:
        return self.shape(list(conn.execute(self.statement, self.params)))

    def then(self, fn: Callable[[Any], Any]) -> Query:
        """The same query, its result passed through ``fn`` (which may raise, to roll
        the whole transaction back)."""
        shape = self.shape
        return Query(self.statement, self.params, lambda rows: fn(shape(rows)))


_COMPILED: dict[int, tuple[sa.ClauseElement, Any]] = {}  # id -> (statement, its Postgres compilation)


def run_queries(conn: sa.Connection, queries: list[Query]) -> list[Any]:
    """Each query's result, in order.  On Postgres they go out together in one
    pipeline, an executemany per statement (one cursor and one prepared statement for
    all of its runs), and their rows come back as named tuples (read by attribute and
    index like SQLAlchemy's); a driver error leaves as SQLAlchemy's exception class, as
    on every other path.  Elsewhere, one after another."""
    if conn.dialect.name != "postgresql" or len(queries) < 2:
        return [query(conn) for query in queries]
    import psycopg
    from psycopg.rows import namedtuple_row

    dbapi = typing.cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
    error = conn.dialect.loaded_dbapi.Error
    groups: dict[int, list[int]] = {}  # statement id -> its queries, in order
    for i, query in enumerate(queries):
        groups.setdefault(id(query.statement), []).append(i)
    rows: list[Any] = [None] * len(queries)
    cursors = []
    try:
        with dbapi.pipeline() as pipeline:
            for indices in groups.values():
                statement = typing.cast(sa.ClauseElement, queries[indices[0]].statement)
                compiled = _COMPILED.get(id(statement))
                if compiled is None:  # kept with its statement, so the id is never reused
                    compiled = _COMPILED[id(statement)] = (statement, statement.compile(dialect=conn.dialect))
                cursor = dbapi.cursor(row_factory=namedtuple_row)
                cursors.append((cursor, indices))
                params = [compiled[1].construct_params(queries[i].params) for i in indices]
                cursor.executemany(str(compiled[1]), typing.cast(list[Mapping[str, Any]], params), returning=True)
            pipeline.sync()
            for cursor, indices in cursors:
                for i in indices:
                    rows[i] = cursor.fetchall()
                    cursor.nextset()
    except error as exc:
        raise sa.exc.DBAPIError.instance(None, None, exc, error) from None
    finally:
        for cursor, _ in cursors:
            cursor.close()
    return [query.shape(found) for query, found in zip(queries, rows)]


# what a fenced commit applies: a closure over the batch's connection, or plain data
# the group commit writes in bulk
Op = Callable[[sa.Connection], Any] | EntryInsert | RunInsert | RunFinish | Exec | Query


RUN_COLUMNS = tuple(c.name for c in runs.c)
RunRow = collections.namedtuple("RunRow", RUN_COLUMNS)  # type: ignore[misc]


def finish_set(status: str, output: str, error: str, now: str) -> str:
    """The SET clause of a finish, over SQL expressions for its values.  A reorg that
    broke a finality assumption meanwhile (``rollback`` set) reopens a run finishing
    completed instead, due now.  A run finishing failed or cancelled has run every
    compensation there is: the request is dropped (reopened, it would run them again)."""
    # "rollback" quoted: a keyword in both dialects; the right-hand sides read the old row
    reopen = f"\"rollback\" IS NOT NULL AND {status} = '{RunState.COMPLETED}'"
    return (f"status = CASE WHEN {reopen} THEN '{RunState.PENDING}' ELSE {status} END, "
            f"output = CASE WHEN {reopen} THEN NULL ELSE {output} END, "
            f"error = CASE WHEN {reopen} THEN NULL ELSE {error} END, "
            f"ready_at = CASE WHEN {reopen} THEN {now} END, \"rollback\" = CASE WHEN {reopen} THEN \"rollback\" END, "
            f"lease_owner = NULL, lease_expires = NULL, waiting_on = NULL, updated_at = {now}")


def finish_runs(dbapi: Any, paramstyle: str, finishes: list[RunFinish]) -> dict[str, RunRow]:
    """Apply ``finishes`` (already fenced); returns each run's row as written."""
    written: dict[str, RunRow] = {}
    if not finishes:
        return written
    sql = _hot_sql(paramstyle, "finish", 1)
    for f in finishes:
        params = {"status": f.status, "output": f.output, "error": f.error, "now": f.now, "id": f.run_id}
        for row in _dbapi_execute(dbapi, sql, params):
            written[f.run_id] = RunRow(*row)
    return written


def one_of(column: sa.Column[Any], values: tuple[str, ...]) -> sa.ColumnElement[bool]:
    """``column IN (...)`` over constants, one plain bind parameter each: ``in_`` of a
    list makes an expanding parameter, whose SQL is rewritten on every execution and
    which an executemany refuses (``insert_signals``); the tracker runs such statements
    on every head."""
    return column.in_([sa.literal(value, column.type) for value in values])


# Parking and waking, built once like the statements above: every park, signal and
# wake-up runs them.  A bind parameter named after a column of the SET clause is taken
# by SQLAlchemy, hence ``b_`` names there.
_PARK: dict[str, Any] = dict(status=sa.bindparam("b_status"), waiting_on=sa.bindparam("b_waiting_on"),
                             lease_owner=None, lease_expires=None, updated_at=sa.bindparam("now"))
# a cancel or rollback requested while the run executed, its heartbeat not yet told,
# makes the parked run due at once: it is not left for its wake-up
_SUSPEND = runs.update().where(runs.c.id == sa.bindparam("rid")).values(
    ready_at=sa.case((sa.or_(runs.c.cancel_requested, runs.c.rollback.is_not(None)),
                      sa.bindparam("now", type_=runs.c.ready_at.type)),
                     else_=sa.bindparam("wake_at", type_=runs.c.ready_at.type)), **_PARK)
# ... except while it compensates: those requests are what it is doing (or have nothing
# left to stop), and an immediate wake-up would claim it again and again until its wait
# (a backoff, an undo's confirmations) is over.  A failed run's failure is kept with it
# (``Claim.failure``): the execution resuming it must not start new work meanwhile
_SUSPEND_COMPENSATING = runs.update().where(runs.c.id == sa.bindparam("rid")).values(
    ready_at=sa.bindparam("wake_at", type_=runs.c.ready_at.type), error=sa.bindparam("b_error"), **_PARK)
_WAKE = (
    runs.update()
    .where(runs.c.id == sa.bindparam("rid"), runs.c.lease_owner.is_(None), ~one_of(runs.c.status, TERMINAL))
    .values(ready_at=sa.bindparam("now"))
)


def suspend_run(
    conn: sa.Connection, run_id: str, status: str, wake_at: float | None, waiting_on: list[str], now: float,
    compensating: bool = False, failure: str | None = None,
) -> None:
    """Park a run without a worker slot; never loses a wake-up that raced with it.
    ``compensating``: its compensations are what it waits on, for ``failure`` (a failed
    run's error) or a cancel, timeout or rollback."""
    conn.execute(*_suspend(run_id, status, wake_at, waiting_on, now, compensating, failure))
    if waiting_on and pending_signal_exists(conn, run_id, waiting_on):
        wake(conn, run_id, now)


def _suspend(run_id: str, status: str, wake_at: float | None, waiting_on: list[str], now: float,
             compensating: bool, failure: str | None) -> tuple[sa.Update, dict[str, Any]]:
    params = {"rid": run_id, "b_status": status, "now": now, "wake_at": wake_at,
              "b_waiting_on": json.dumps(waiting_on) if waiting_on else None}
    if not compensating:
        return _SUSPEND, params
    return _SUSPEND_COMPENSATING, {**params, "b_error": failure}


# Postgres: the look for a pending signal and the wake-up in one statement.  It runs as
# a statement of its own after the suspend, so its snapshot is taken once the suspend
# holds the run's lock: a signal sent meanwhile (its sender locks the run first) is seen.
_WAKE_IF_SIGNALLED = _WAKE.where(sa.exists().where(
    signals.c.run_id == sa.bindparam("rid"), signals.c.consumed.is_(sa.false()),
    signals.c.name == sa.any_(sa.bindparam("names", type_=postgresql.ARRAY(sa.String())))))


def suspension(dialect: str, run_id: str, status: str, wake_at: float | None, waiting_on: list[str],
               now: float, compensating: bool = False, failure: str | None = None) -> list[Op]:
    """The ops of ``suspend_run`` for a run's group commit.  On Postgres two statements
    nobody reads the result of, which the batch runs for all its parking runs at once:
    the suspend, then the wake-up if a signal it waits for is there already."""
    if dialect != "postgresql":
        return [lambda conn: suspend_run(conn, run_id, status, wake_at, waiting_on, now, compensating, failure)]
    ops: list[Op] = [Exec(*_suspend(run_id, status, wake_at, waiting_on, now, compensating, failure))]
    if waiting_on:
        ops.append(Exec(_WAKE_IF_SIGNALLED, {"rid": run_id, "names": waiting_on, "now": now}))
    return ops


def wake(conn: sa.Connection, run_id: str, now: float) -> None:
    """Make a parked run due now (a running one notices on its own)."""
    conn.execute(_WAKE, {"rid": run_id, "now": now})


def release_crashed(conn: sa.Connection, run_id: str, fence: int) -> None:
    """Hand back a run whose executor crashed, as one more recovery.  It stays due when
    its lease would have expired (a crash that repeats must not spin), and the fence
    moves on so nothing the crashed execution still had in flight can land."""
    conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.fence == fence)
        .values(status=RunState.PENDING, lease_owner=None, lease_expires=None, fence=runs.c.fence + 1,
                recoveries=runs.c.recoveries + 1)
    )


def dead_letter(conn: sa.Connection, run_id: str, fence: int, recoveries: int, error: str, now: float) -> bool:
    """End a run the engine gives up on (too many recoveries) without running its
    compensations; False when it is no longer ours."""
    return bool(conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.fence == fence)
        .values(status=RunState.DEAD_LETTERED, error=error, recoveries=recoveries, ready_at=None, lease_owner=None,
                lease_expires=None, waiting_on=None, fence=runs.c.fence + 1, updated_at=now)
    ).rowcount)


_parent = runs.alias("parent")
# a child whose parent has finished: a run's children do not outlive it
_ORPHAN_CHILD = sa.exists().where(_parent.c.id == runs.c.parent_id, runs.c.parent_slot.is_not(None),
                                  _parent.c.status.in_(TERMINAL))


def retry_dead_lettered(conn: sa.Connection, run_id: str, now: float) -> bool:
    """Put a dead-lettered run back to pending, due now, with a fresh recovery budget;
    it resumes from its journal.  A child whose parent finished meanwhile (its cancel
    passed a dead-lettered child by) resumes only to be cancelled: its compensations
    run, it does not complete for a parent that is gone.  False when it is not (or no
    longer) dead-lettered."""
    return bool(conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.status == RunState.DEAD_LETTERED)
        .values(status=RunState.PENDING, error=None, recoveries=0, ready_at=now, updated_at=now,
                cancel_requested=sa.or_(runs.c.cancel_requested, _ORPHAN_CHILD))
    ).rowcount)


def select_runs(conn: sa.Connection, *, workflow: str | None = None, status: str | None = None,
                since: float | None = None, forks: bool = True) -> list[str]:
    """Ids of the runs matching every filter given, oldest first (a replay sweep's or a
    bulk fork's selection); without ``forks``, no run forked from another (a bulk fork
    run again would fork its own earlier forks)."""
    q = sa.select(runs.c.id).order_by(runs.c.created_at, runs.c.id)
    if not forks:
        q = q.where(sa.or_(runs.c.parent_id.is_(None), runs.c.parent_slot.is_not(None)))
    if workflow is not None:
        q = q.where(limits.matches(runs.c.workflow, workflow))
    if status is not None:
        q = q.where(runs.c.status == status)
    if since is not None:
        q = q.where(runs.c.created_at >= since)
    return list(conn.execute(q).scalars())


def forked(conn: sa.Connection, parent_ids: list[str]) -> set[str]:
    """Which of ``parent_ids`` some fork was already made from (a bulk fork resumes
    past them)."""
    found: set[str] = set()
    for part in _chunks(parent_ids):
        found.update(conn.execute(sa.select(runs.c.parent_id).where(
            runs.c.parent_id.in_(part), runs.c.parent_slot.is_(None))).scalars())
    return found


def insert_fork(conn: sa.Connection, row: dict[str, Any], entries: list[dict[str, Any]],
                tries: list[dict[str, Any]]) -> bool:
    """A fork: its run row (``run_row`` plus ``parent_id`` and ``overrides``), due now,
    with the copied journal entries and failed attempts it starts from; False (nothing
    written) when its source is no longer finished (a dead-lettered one retried since
    its history was read): both would execute the steps after the fork point.  The
    source is locked first, as ``retry`` locks it before looking for forks."""
    (source,) = lock_runs(conn, [row["parent_id"]], "status")
    if source.status not in TERMINAL:
        return False
    conn.execute(_INSERT_RUN, row)
    if entries:
        conn.execute(journal.insert(), [{**e, "run_id": row["id"]} for e in entries])
    if tries:
        conn.execute(attempts.insert(), [{**a, "run_id": row["id"]} for a in tries])
    return True


def request_cancel(conn: sa.Connection, run_id: str, now: float) -> None:
    """Ask the run and every unfinished run below it (children, their children...) to
    stop: a parent's cancel reaches its children at once, not after its compensations."""
    cancel_runs(conn, [run_id], now)


def cancel_runs(conn: sa.Connection, run_ids: list[str], now: float) -> None:
    """Request the cancel of ``run_ids`` and of their unfinished descendants, locked in
    id order (the module's lock order) before any of them is updated."""
    tree = set(run_ids)
    frontier = list(run_ids)
    while frontier:
        below = [r for part in _chunks(frontier) for r in conn.execute(
            sa.select(runs.c.id).where(runs.c.parent_id.in_(part), runs.c.parent_slot.is_not(None),
                                       runs.c.status.not_in(TERMINAL))).scalars() if r not in tree]
        tree.update(below)
        frontier = below
    ids = sorted(tree)
    lock_runs(conn, ids)
    for part in _chunks(ids):
        conn.execute(runs.update().where(runs.c.id.in_(part), runs.c.status.not_in(TERMINAL))
                     .values(cancel_requested=True, updated_at=now))
        conn.execute(runs.update()
                     .where(runs.c.id.in_(part), runs.c.lease_owner.is_(None), runs.c.status.not_in(TERMINAL))
                     .values(ready_at=now))


# --- child runs -------------------------------------------------------------------


def insert_child(conn: sa.Connection, row: dict[str, Any], parent_id: str, parent_slot: str) -> str:
    """A child run (``run_row`` fields, ``idempotency_key`` derived from the parent's
    slot), due now; returns its id.  The key may be taken by the child a reorg
    rollback of the same slot cancelled: the slot's next child takes ``key@2``, ``@3``..."""
    base, n = row["idempotency_key"], 1
    while run_by_key(conn, row["idempotency_key"]) is not None:
        n += 1
        row["idempotency_key"] = f"{base}@{n}"
    conn.execute(_INSERT_RUN, {**row, "parent_id": parent_id, "parent_slot": parent_slot})
    return str(row["id"])


_OUTCOME = sa.select(runs.c.status, runs.c.output, runs.c.error).where(runs.c.id == sa.bindparam("rid"))


def child_outcome(conn: sa.Connection, child_id: str) -> tuple[str, str | None, str | None]:
    """(status, output, error) of a child run."""
    row = conn.execute(_OUTCOME, {"rid": child_id}).one()
    return row.status, row.output, row.error


def children(conn: sa.Connection, run_id: str) -> list[sa.Row[Any]]:
    """The child runs a run started (not its forks), oldest first."""
    return list(conn.execute(sa.select(runs).where(runs.c.parent_id == run_id, runs.c.parent_slot.is_not(None))
                             .order_by(runs.c.created_at, runs.c.id)))


def unfinished_children(conn: sa.Connection, run_id: str) -> list[str]:
    return list(conn.execute(sa.select(runs.c.id).where(
        runs.c.parent_id == run_id, runs.c.parent_slot.is_not(None), runs.c.status.not_in(TERMINAL))).scalars())


def child_signal(child_id: str) -> str:
    """The signal a child's finish sends its parent, parked on it in ``ctx.child``."""
    return f"child:{child_id}"


def finish_child(conn: sa.Connection, finish: RunFinish, fence: int, parent_id: str) -> RunRow | None:
    """A child run's final write, which also wakes its parent: the child and the parent
    are locked in id order first (the module's lock order), then the child's fence is
    checked, so the finish and the parent's wake-up are one transaction and a child
    finishing never deadlocks with a heartbeat or a cancel holding both.  None when the
    child is no longer ours."""
    rows = {r.id: r for r in lock_runs(conn, sorted({finish.run_id, parent_id}), "fence", "status")}
    mine = rows.get(finish.run_id)
    if mine is None or mine.fence != fence:
        return None
    dbapi = conn.connection.dbapi_connection
    row: Any = finish_runs(dbapi, conn.dialect.paramstyle, [finish])[finish.run_id]
    parent = rows.get(parent_id)
    if row.status in TERMINAL and parent is not None and parent.status not in TERMINAL:
        insert_signal(conn, parent_id, child_signal(finish.run_id), "null", finish.now)
    return row


# --- workers --------------------------------------------------------------------


def announce_worker(conn: sa.Connection, worker_id: str, workflows: list[str], now: float, ttl: float) -> None:
    """Record (or refresh) that ``worker_id`` serves ``workflows`` until ``now + ttl``,
    and forget workers whose announcement has expired (killed ones never retire)."""
    text = json.dumps(sorted(workflows))
    refreshed = conn.execute(
        workers.update().where(workers.c.id == worker_id).values(workflows=text, seen_at=now, expires=now + ttl)
    ).rowcount
    if not refreshed:
        conn.execute(workers.insert().values(id=worker_id, workflows=text, started_at=now, seen_at=now,
                                             expires=now + ttl))
    conn.execute(workers.delete().where(workers.c.expires < now))


def retire_worker(conn: sa.Connection, worker_id: str) -> None:
    conn.execute(workers.delete().where(workers.c.id == worker_id))


def served_workflows(conn: sa.Connection, now: float) -> set[str]:
    """Every workflow some live worker (announcement not expired) can execute."""
    served: set[str] = set()
    for text in conn.execute(sa.select(workers.c.workflows).where(workers.c.expires >= now)).scalars():
        served.update(json.loads(text))
    return served


# --- journal --------------------------------------------------------------------


# built once: every claim of a run that ran before (each wake-up of a parked one) reads them
_LIVE_ENTRIES = (
    sa.select(
        journal.c.run_id, journal.c.id, journal.c.branch, journal.c.position, journal.c.key, journal.c.kind,
        journal.c.status, journal.c.output, journal.c.error, journal.c.attempts,
    )
    .where(journal.c.run_id.in_(sa.bindparam("ids", expanding=True)), journal.c.superseded == 0)
    .order_by(journal.c.id)
)
_LIVE_ATTEMPTS = (
    sa.select(attempts.c.run_id, attempts.c.branch, attempts.c.key, attempts.c.attempt, attempts.c.error,
              attempts.c.next_at)
    .where(attempts.c.run_id.in_(sa.bindparam("ids", expanding=True)), attempts.c.superseded == 0)
    .order_by(attempts.c.id)
)


def load_histories(conn: sa.Connection, run_ids: list[str]) -> dict[str, History]:
    out: dict[str, History] = {rid: ([], {}) for rid in run_ids}
    for r in conn.execute(_LIVE_ENTRIES, {"ids": run_ids}):
        out[r.run_id][0].append(
            Entry(r.id, r.branch, r.position, r.key, r.kind, r.status, r.output, r.error, r.attempts)
        )
    for a in conn.execute(_LIVE_ATTEMPTS, {"ids": run_ids}):
        out[a.run_id][1].setdefault((a.branch, a.key), []).append(AttemptRow(a.attempt, a.error, a.next_at))
    return out


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    """``ids`` in slices small enough for one IN list on either dialect."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


@dataclass(frozen=True)
class RecordedRows:
    """Everything recorded about some runs, superseded rows included, each list in
    recording order: what replay and export read."""

    runs: list[sa.Row[Any]]
    journal: list[sa.Row[Any]]
    attempts: list[sa.Row[Any]]
    signals: list[sa.Row[Any]]


def recorded_rows(conn: sa.Connection, run_ids: list[str]) -> RecordedRows:
    found = RecordedRows([], [], [], [])
    for part in _chunks([r for r in run_ids if not limits.unstorable(r)]):
        found.runs.extend(conn.execute(sa.select(runs).where(runs.c.id.in_(part))))
        for table, rows in ((journal, found.journal), (attempts, found.attempts), (signals, found.signals)):
            rows.extend(conn.execute(sa.select(table).where(table.c.run_id.in_(part)).order_by(table.c.id)))
    return found


# built once; the columns they write are the parameters' names (SET / VALUES follow them)
_UPDATE_ENTRY = journal.update().where(
    journal.c.run_id == sa.bindparam("b_run"), journal.c.branch == sa.bindparam("b_branch"),
    journal.c.key == sa.bindparam("b_key"), journal.c.superseded == 0)
_INSERT_ATTEMPT = attempts.insert()


def update_entry(conn: sa.Connection, run_id: str, branch: str, key: str, **values: Any) -> None:
    conn.execute(_UPDATE_ENTRY, {**values, "b_run": run_id, "b_branch": branch, "b_key": key})


def insert_attempt(conn: sa.Connection, run_id: str, **values: Any) -> None:
    conn.execute(_INSERT_ATTEMPT, {**values, "run_id": run_id})


def journal_rows(conn: sa.Connection, run_id: str) -> list[sa.Row[Any]]:
    return list(conn.execute(sa.select(journal).where(journal.c.run_id == run_id).order_by(journal.c.id)))


def attempt_rows(conn: sa.Connection, run_id: str) -> list[sa.Row[Any]]:
    return list(conn.execute(sa.select(attempts).where(limits.matches(attempts.c.run_id, run_id))
                             .order_by(attempts.c.id)))


# --- signals --------------------------------------------------------------------


# built once: every signal, park and wake-up runs them
_INSERT_SIGNAL = signals.insert()


def _wake_for_signal(position: Callable[..., sa.ColumnElement[Any]]) -> sa.Update:
    """Wake a run whose ``waiting_on`` (``json.dumps`` of the names it parked on) holds
    a name, sought as ``" " + json.dumps(name)`` in the list with its "[" made a
    space.  A quote after a space opens a name (a quote inside a name is escaped,
    '\\"'), so the match is exact and case-sensitive where SQLite's LIKE ignored ASCII
    case, and wants no wildcard escaping.  ``position`` is the dialect's substring
    search."""
    names = sa.literal(" ", sa.Text).concat(sa.func.substr(runs.c.waiting_on, 2))
    return _WAKE.where(position(names, sa.bindparam("b_listed", type_=sa.Text)) > 0)


_WAKE_FOR_SIGNAL = {False: _wake_for_signal(sa.func.instr), True: _wake_for_signal(sa.func.strpos)}


_PENDING_SIGNAL = sa.select(signals.c.id).where(
    signals.c.run_id == sa.bindparam("rid"), signals.c.name.in_(sa.bindparam("names", expanding=True)),
    signals.c.consumed.is_(sa.false())).limit(1)
_OLDEST_SIGNAL = (
    sa.select(signals.c.id, signals.c.payload)
    .where(signals.c.run_id == sa.bindparam("rid"), signals.c.name == sa.bindparam("b_name"),
           signals.c.consumed.is_(sa.false()))
    .order_by(signals.c.id)
    .limit(1)
)
_CONSUME_SIGNAL = signals.update().where(signals.c.id == sa.bindparam("b_id")).values(consumed=True)
_CONSUME_SIGNALS = (
    signals.update()
    .where(signals.c.run_id == sa.bindparam("rid"), signals.c.name == sa.bindparam("b_name"),
           signals.c.consumed.is_(sa.false()))
    .values(consumed=True)
)


def insert_signal(conn: sa.Connection, run_id: str, name: str, payload: str, now: float) -> None:
    """One signal (``insert_signals``)."""
    insert_signals(conn, [(run_id, name, payload)], now)


def insert_signals(conn: sa.Connection, sent: Sequence[tuple[str, str, str]], now: float) -> None:
    """Record signals ``(run_id, name, payload)``, in that order, and wake each run
    parked on its signal's name: a statement per step for the whole batch (a tracker's
    head finalises hundreds of submissions)."""
    if not sent:
        return
    # Row-lock the runs *before* the signals exist: a concurrent suspend (which locks the
    # run, then looks for pending signals) then either finishes first, and the UPDATE
    # below sees its ``waiting_on``, or starts after our commit and sees the signal.
    # Without the lock, an UPDATE matching no row (lease still held) locks nothing, and
    # a suspend committing in between misses the still-uncommitted signal: lost wake-up.
    # In id order (the module's lock order), all of them before any signal is written.
    for part in _chunks(sorted({run_id for run_id, _, _ in sent})):
        lock_runs(conn, part)
    conn.execute(_INSERT_SIGNAL, [{"run_id": run_id, "name": name, "payload": payload, "created_at": now}
                                  for run_id, name, payload in sent])
    # One UPDATE per signal, not read-then-write: on Postgres it waits for a concurrent
    # suspend (which row-locks the run) and re-checks ``waiting_on`` on the committed row.
    conn.execute(_WAKE_FOR_SIGNAL[conn.dialect.name == "postgresql"],
                 [{"rid": run_id, "now": now, "b_listed": " " + json.dumps(name)} for run_id, name, _ in sent])


def pending_signal_exists(conn: sa.Connection, run_id: str, names: list[str]) -> bool:
    return conn.execute(_PENDING_SIGNAL, {"rid": run_id, "names": names}).first() is not None


def consume_signal(conn: sa.Connection, run_id: str, name: str) -> tuple[bool, str | None]:
    """Take the oldest unconsumed signal of that name (found?, payload)."""
    row = conn.execute(_OLDEST_SIGNAL, {"rid": run_id, "b_name": name}).first()
    if row is None:
        return False, None
    conn.execute(_CONSUME_SIGNAL, {"b_id": row.id})
    return True, row.payload


def consume_signals(run_id: str, name: str) -> Exec:
    return Exec(_CONSUME_SIGNALS, {"rid": run_id, "b_name": name})


# --- reorg rollbacks ------------------------------------------------------------------


def rollback_targets(request: dict[str, Any]) -> list[int]:
    """The journal entries a rollback request names: its "entry_ids", or the one
    "entry_id" of a request recorded before there could be several."""
    return list(request["entry_ids"]) if "entry_ids" in request else [request["entry_id"]]


def request_rollback(conn: sa.Connection, run_id: str, step: str, reason: str, now: float) -> bool:
    """Flag the run if the submit step journaled success on the now-broken assumption."""
    branch, _, key = step.partition("\x1f")
    entry = conn.execute(
        sa.select(journal.c.id).where(
            journal.c.run_id == run_id, journal.c.branch == branch, journal.c.key == key,
            journal.c.superseded == 0, journal.c.status == EntryState.OK,
        )
    ).first()
    if entry is None:
        return False  # not journaled yet: the step sees the submission pending and waits again
    run = conn.execute(sa.select(runs.c.status, runs.c.rollback).where(runs.c.id == run_id)).one()
    if run.status not in TERMINAL and conn.execute(sa.select(journal.c.id).where(
            journal.c.run_id == run_id, journal.c.branch == branch,
            journal.c.key == f"{limits.COMPENSATION_PREFIX}{key}", journal.c.superseded == 0,
            journal.c.status == EntryState.OK)).first() is not None:
        # already undone by a run still compensating the rest (it failed or was
        # cancelled): rolling it back would forget the undo, and the stopped run would
        # undo the payment again once it re-lands.  A finished run is flagged below, never
        # reopened: the flag only tells that the reorg came after it ended
        return False
    if limits.in_compensation(branch):
        # an undo has no dependents to undo in turn: the submission is back to
        # broadcast, and the tracker re-broadcasts its signed bytes until it is final
        return False
    current = run.rollback
    # every broken entry is a target: two sibling branches' submissions orphaned together
    # are independent, so neither covers the other (``reorg.dependents`` unites them);
    # "entry_id" is the earliest, as before there were several
    request = {"entry_ids": [], "reason": reason} if current is None else json.loads(current)
    targets = rollback_targets(request)
    if int(entry.id) in targets:
        return True
    targets = sorted({*targets, int(entry.id)})
    conn.execute(
        runs.update().where(runs.c.id == run_id).values(
            rollback=json.dumps({"entry_id": targets[0], "entry_ids": targets, "reason": request["reason"]}),
            updated_at=now,
        )
    )
    # a completed run is reopened; a failed or cancelled one already compensated everything
    conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.status == RunState.COMPLETED)
        .values(status=RunState.PENDING, ready_at=now)
    )
    wake(conn, run_id, now)
    return True


def supersede(conn: sa.Connection, run_id: str, doomed: list[Entry], reason: str, now: float) -> None:
    """Mark rolled-back entries (and their compensations, with everything a compensation
    journaled in its branch, and their attempts) invalidated and reopen the run at the
    invalidated step.  A compensation of an entry that runs again after the resume is
    then a new one, with fresh steps; its submissions' keys are derived from the same
    intent, so an undo already on the chain is found, not sent twice.  A signal a
    rolled-back ``wait_for`` had received is delivered again: its sender sent it once,
    and the wait runs again."""
    redelivered = [(run_id, e.key.split(limits.OCCURRENCE_SEP)[0], e.output) for e in doomed
                   if e.kind == "wait" and e.status == EntryState.OK and e.output is not None]
    insert_signals(conn, redelivered, now)
    for e in doomed:
        keys = [e.key, f"{limits.COMPENSATION_PREFIX}{e.key}"]
        inside = limits.compensation_branch(e.branch, e.key)
        for table, values in ((journal, dict(superseded=journal.c.id, reason=reason)),
                              (attempts, dict(superseded=attempts.c.id))):
            conn.execute(
                table.update()
                .where(table.c.run_id == run_id, table.c.superseded == 0,
                       sa.or_(sa.and_(table.c.branch == e.branch, table.c.key.in_(keys)),
                              table.c.branch == inside,
                              table.c.branch.startswith(inside + limits.BRANCH_SEP, autoescape=True)))
                .values(**values)
            )
    conn.execute(
        runs.update().where(runs.c.id == run_id).values(
            rollback=None, status=RunState.PENDING, output=None, error=None, ready_at=now, updated_at=now,
            lease_owner=None, lease_expires=None,
        )
    )
