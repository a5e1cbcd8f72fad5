"""Group commit: many runs' journal writes share one transaction.

A write's awaiting coroutine resumes only after COMMIT returns, and every write made
while the event loop works through one round of ready tasks goes into the same
transaction.  (A run whose step was its only work in flight hands that step's row over
later, with its next write -- at the latest before anything that could have an
effect, see ``scope`` -- so a K-step run makes K + 1 commits: creation, steps, the
last step's row with the finish.)  With 32 runs in flight this
turns 32 fsyncs into one, without weakening what each step is promised.

The commit runs on the event loop's own thread, at the end of the round: handing it to
a thread costs two thread wake-ups (~150 µs on a small VM), more than the INSERT and
often more than the fsync itself.  The drivers release the GIL while they wait on the
disk or the server, so step functions running in threads go on meanwhile.

A write nobody could share (the worker runs no other run, and the write's own run has
nothing else in flight) commits at once instead: deferring it would only cost the two
loop rounds of the hand-off (~40 µs, a fifth of a step on SQLite) for a batch of one.

A database across the network changes the sums: a commit's round trip (milliseconds)
would stall everything else on the loop (heartbeats, trackers, other runs' async
steps).  There (``in_thread``) one thread of the committer's own makes each commit,
one at a time, while the writes arriving meanwhile gather into the next batch.

A commit whose reply is lost (the connection broke after the write was sent) may have
happened: it is settled by asking the database (``recovery``), in whichever thread
commits, never retried blindly and never reported to a step as its own failure.  On
the loop (a local database) the settling blocks the loop for its few round trips: it
happens only after a connection broke.  A write known not to have landed is sent
again on a new connection (once per write: a database that stays out of reach
abandons the executions instead, which replay after their lease).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import LeaseLostError
from ..storage import recovery, store
from ..storage.entrywriter import EntryWriter
from ..storage.store import Op
from ..threads import ThreadPool


@dataclass
class _Item:
    run_id: str
    fence: int | None  # None: the item creates the run
    ops: list[Op]
    future: asyncio.Future[list[Any]] | None = field(default=None, repr=False)  # None: committed inline
    results: list[Any] | None = None  # of the ops run on a general batch


def _leading_query(ops: list[Op]) -> int | None:
    """Where the item's first query is when no closure comes before it: that one can
    run ahead, with other runs' (data ops are written after every closure anyway).  One
    per item: the batch's queries are grouped by statement, which would not keep two
    of one run in order."""
    for i, op in enumerate(ops):
        if isinstance(op, store.Query):
            return i
        if not isinstance(op, (store.EntryInsert, store.RunInsert, store.RunFinish, store.Exec)):
            break
    return None


class Committer:
    def __init__(self, engine: sa.Engine, max_batch: int = 512, *, running: Callable[[], int] | None = None,
                 in_thread: bool = False) -> None:
        self._engine = engine
        self.dialect = engine.dialect.name  # which ops a batch can run in bulk (``store.suspension``)
        self._max_batch = max_batch
        self._pending: list[_Item] = []
        self._scheduled = False
        self._conn: sa.Connection | None = None  # batches with more than journal rows
        self._writer = EntryWriter(engine)  # batches of journal rows only
        # the worker's count of runs executing: with none but the writer's own (none at
        # all for a creation), a write its run marks exclusive has nobody to share with;
        # without a worker, every write waits for the end of the loop round, and so does
        # every write committed in a thread: the loop must never wait for the database
        self._running = None if in_thread else running
        self._thread = ThreadPool(1, "chainflow-commit") if in_thread else None
        self._in_flight: asyncio.Future[list[Any]] | None = None  # the batch the thread is committing

    async def close(self) -> None:
        for item in self._pending:
            if item.future is not None and not item.future.done():
                item.future.set_exception(RuntimeError("committer closed"))
        self._pending = []
        if self._in_flight is not None:
            await asyncio.wait((self._in_flight,))  # its writers learn how it ended
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._writer.close()

    async def write(self, run_id: str, fence: int | None, ops: list[Op], *, exclusive: bool = False) -> list[Any]:
        """Apply ``ops`` in one fenced transaction; returns each op's result once durable.

        ``fence`` None: ``ops`` is one ``RunInsert`` of a new run; its result says
        whether the run was created (False: its idempotency key was taken).
        ``exclusive``: the run has no other work in flight that could write now (a
        creation always qualifies)."""
        # exclusive, and no run executing but the writer's own (none at all for a creation)
        if exclusive and not self._scheduled and self._running is not None \
                and self._running() == (0 if fence is None else 1):
            outcome, = self._commit([_Item(run_id, fence, ops)])  # a batch of one, at once
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append(_Item(run_id, fence, ops, fut))
        if not self._scheduled and self._in_flight is None:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._thread is not None:
            self._hand_off()
            return
        while self._pending:
            batch = self._take()
            self._settle(batch, self._commit(batch))

    def _take(self) -> list[_Item]:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        return batch

    def _hand_off(self) -> None:
        """Start the next batch in the commit thread, unless one is in flight (it starts
        the next when it ends)."""
        assert self._thread is not None
        if self._in_flight is not None or not self._pending:
            return
        batch = self._take()
        self._in_flight = self._thread.run(functools.partial(self._commit, batch))
        self._in_flight.add_done_callback(functools.partial(self._landed, batch))

    def _landed(self, batch: list[_Item], done: asyncio.Future[list[Any]]) -> None:
        self._in_flight = None
        if done.cancelled():
            outcomes: list[Any] = [RuntimeError("committer closed")] * len(batch)
        else:
            error = done.exception()
            outcomes = [error] * len(batch) if error is not None else done.result()
        self._settle(batch, outcomes)
        self._hand_off()

    @staticmethod
    def _settle(batch: list[_Item], outcomes: list[Any]) -> None:
        for item, outcome in zip(batch, outcomes):
            assert item.future is not None
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _commit(self, batch: list[_Item]) -> list[Any]:
        try:
            return self._commit_together(batch)
        except recovery.OutcomeUnknown as unknown:
            return [self._unknown(item, unknown) for item in batch]
        except Exception:
            # one bad write must not sink the others: retry each alone (a batch whose
            # reply was lost gets here only once the database said it did not commit)
            results: list[Any] = []
            down: BaseException | None = None  # the database stopped answering: the rest fail alike
            for item in batch:
                outcome = down or self._commit_alone(item)
                if isinstance(outcome, BaseException) and self._connection_lost(outcome):
                    down = outcome
                results.append(outcome)
            return results

    def _commit_alone(self, item: _Item, again: bool = True) -> Any:
        """One item's outcome, committed in a batch of its own.  A connection lost on the
        way is tried once more on a new one: the write did not land (a lost reply is
        settled before its error gets here), and giving up would abandon the execution,
        whose lease then lapses and whose last step runs again."""
        try:
            return self._commit_together([item])[0]
        except recovery.OutcomeUnknown as unknown:
            return self._unknown(item, unknown)
        except sa.exc.IntegrityError as exc:
            return self._already_durable(item) or exc
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting step
            if again and self._connection_lost(exc):
                return self._commit_alone(item, again=False)
            return exc

    def _connection_lost(self, exc: BaseException) -> bool:
        """The link to a database server broke (SQLite has no link to lose)."""
        return self.dialect != "sqlite" and recovery.reply_lost(exc)

    @staticmethod
    def _unknown(item: _Item, unknown: recovery.OutcomeUnknown) -> BaseException:
        """What a writer whose commit may or may not have happened is told: a run's
        execution is abandoned (the lease runs out and a worker replays the run from
        what the journal holds; the write is neither failed nor applied twice); a
        start gets the database error (retry it with an idempotency key)."""
        return LeaseLostError(item.run_id) if item.fence is not None else unknown.cause

    def _already_durable(self, item: _Item) -> list[Any] | None:
        """The answer of an item of journal rows only whose every row is already in the
        journal, identical: an earlier commit of this very write landed, so the unique
        slot refusing it again is no failure of the step.  None otherwise."""
        rows = [op.row for op in item.ops if isinstance(op, store.EntryInsert)]
        if item.fence is None or not rows or len(rows) != len(item.ops):
            return None
        try:
            with self._engine.connect() as conn:
                durable = recovery.durable_runs(conn, rows)
        except Exception:  # noqa: BLE001 - no proof: the original error stands
            return None
        return [None] * len(rows) if item.run_id in durable else None

    def _commit_together(self, batch: list[_Item]) -> list[Any]:
        # items without a fence create runs; the others write to runs they must still own
        fences = {item.run_id: item.fence for item in batch if item.fence is not None}
        entries: list[dict[str, Any]] = []
        new_runs: list[dict[str, Any]] = []
        finishes: list[store.RunFinish] = []
        closures = False
        for item in batch:  # one pass: this runs for every step
            for op in item.ops:
                if isinstance(op, store.EntryInsert):
                    entries.append(op.row)
                elif isinstance(op, store.RunInsert):
                    new_runs.append(op.row)
                elif isinstance(op, store.RunFinish):
                    finishes.append(op)
                else:
                    closures = True
        if not closures:
            ours, created, finished = self._writer.write(fences, entries, new_runs, finishes)
        else:
            ours, created, finished = self._commit_general(batch, fences)
        results: list[Any] = []
        for item in batch:
            if item.fence is not None and item.run_id not in ours:
                results.append(LeaseLostError(item.run_id))
            elif item.fence is None:
                results.append([isinstance(op, store.RunInsert) and op.row["id"] in created for op in item.ops])
            elif item.results is None and not finished:  # journal rows only: nothing to answer
                results.append([None] * len(item.ops))
            else:
                results.append([
                    finished.get(op.run_id) if isinstance(op, store.RunFinish)
                    else item.results[i] if item.results is not None else None
                    for i, op in enumerate(item.ops)
                ])
        return results

    def _commit_general(self, batch: list[_Item], fences: dict[str, int],
                        ) -> tuple[set[str], set[str], dict[str, store.RunRow]]:
        """Batches holding closures too: through SQLAlchemy, ops in order."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            # one long-lived connection: a pool checkout per batch costs more than the insert
            self._conn = self._engine.connect()
        conn = self._conn
        with conn.begin() as transaction:
            dbapi, style = conn.connection.dbapi_connection, self._engine.dialect.paramstyle
            # the id a lost COMMIT reply is settled by (one round trip per batch with
            # closures on Postgres, none on the journal-only path; None on SQLite)
            xid = recovery.transaction_id(conn)
            ours = store.fences_ok(dbapi, style, fences)
            kept = [item for item in sorted(batch, key=lambda i: i.run_id)
                    if item.fence is None or item.run_id in ours]
            # the queries each run opens with, all of the batch's in one round trip
            leading = [(item, i) for item in kept if (i := _leading_query(item.ops)) is not None]
            answers = store.run_queries(conn, [item.ops[i] for item, i in leading])  # type: ignore[misc]
            answered = {(id(item), i): answer for (item, i), answer in zip(leading, answers)}
            entries: list[dict[str, Any]] = []
            new_runs: list[dict[str, Any]] = []
            finishes: list[store.RunFinish] = []
            execs: list[store.Exec] = []
            for item in kept:
                item.results = []
                for i, op in enumerate(item.ops):
                    if (id(item), i) in answered:
                        item.results.append(answered[(id(item), i)])
                        continue
                    if isinstance(op, store.EntryInsert):
                        entries.append(op.row)  # written below, all rows in one statement
                    elif isinstance(op, store.RunInsert):
                        new_runs.append(op.row)
                    elif isinstance(op, store.RunFinish):
                        finishes.append(op)  # a finish is the run's last op: nothing follows it
                    elif isinstance(op, store.Exec):
                        execs.append(op)  # below, one executemany per statement
                    else:
                        item.results.append(op(conn))
                        continue
                    item.results.append(None)
            store.execute_all(conn, execs)
            created = store.insert_runs(dbapi, style, new_runs)
            store.insert_entries(dbapi, style, entries)
            finished = store.finish_runs(dbapi, style, finishes)
            try:
                transaction.commit()
            except sa.exc.DBAPIError as exc:
                if xid is None or not recovery.reply_lost(exc):
                    raise
                recovery.transaction_committed(self._engine, xid, exc)  # returns only if it did
        return ours, created, finished
