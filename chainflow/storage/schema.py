"""The whole SQL schema, in one place, for SQLite and Postgres alike.

Times are float epoch seconds taken from the engine's clock (never the database's
``now()``) so an injected clock governs sleeps and leases end to end.  Payloads are
codec JSON in TEXT columns: identical bytes on both dialects.  Journal rows are never
deleted; an invalidated row gets ``superseded`` set to its own id, which frees the
(run, branch, key) slot for the re-execution while the history stays readable.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

runs = sa.Table(
    "cf_runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # a states.RunState
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("output", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("idempotency_key", sa.String(300), unique=True),
    sa.Column("input_hash", sa.String(64), nullable=False),
    # the run a fork was made from (``chainflow fork``): its journal starts as a copy of
    # the parent's entries before the fork point
    sa.Column("parent_id", sa.String(36)),
    # a child run's slot in its parent ("branch/key" of the parent's ``ctx.child``); NULL
    # for a fork, whose ``parent_id`` names its source instead (v8)
    sa.Column("parent_slot", sa.Text),
    # a fork's swapped code, JSON {"workflow": "module:fn" | null, "steps": {name: "module:fn"}}
    # (``runtime.overrides``); NULL for every other run (v7)
    sa.Column("overrides", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # claimable when ready_at <= now and (no lease or lease expired); NULL = waits for an event
    sa.Column("ready_at", sa.Float),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expires", sa.Float),
    sa.Column("fence", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deadline", sa.Float),
    sa.Column("waiting_on", sa.Text),  # JSON list of signal names the parked run waits for
    sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
    # set by the reorg monitor: {"entry_id": …, "reason": …}; the next execution rolls
    # back that journal entry and everything that depended on it before resuming
    sa.Column("rollback", sa.Text),
    # claims that took the run over from a worker whose lease expired while running it,
    # or that followed an executor crash; past the app's max_recoveries the run is
    # dead-lettered instead of executed once more (a retry resets it)
    sa.Column("recoveries", sa.Integer, nullable=False, server_default="0"),
    # partial: every finished run has a NULL ready_at and most runs no parent; an entry
    # for each would be one page more to write with each creation and finish
    *(sa.Index(f"ix_cf_runs_{column}", column, sqlite_where=sa.text(f"{column} IS NOT NULL"),
               postgresql_where=sa.text(f"{column} IS NOT NULL")) for column in ("ready_at", "parent_id")),
    # v9: the dashboard's runs page, newest first, one keyset page at a time, unfiltered
    # or by status, workflow or both: each page is an index range, however deep it goes
    # (the first index also serves counts by status and workflow, as its v1 shape did)
    sa.Index("ix_cf_runs_status_workflow", "status", "workflow", "created_at", "id"),
    sa.Index("ix_cf_runs_created", "created_at", "id"),
    sa.Index("ix_cf_runs_status_created", "status", "created_at", "id"),
    sa.Index("ix_cf_runs_workflow_created", "workflow", "created_at", "id"),
)

journal = sa.Table(
    "cf_journal",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("branch", sa.String(500), nullable=False, server_default=""),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("key", sa.String(500), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # a states.EntryState
    sa.Column("output", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("superseded", BigId, nullable=False, server_default="0"),
    sa.Column("reason", sa.Text),
    # also serves "this run's journal": a second index on run_id would cost every step
    # one more page to write and fsync
    sa.UniqueConstraint("run_id", "branch", "key", "superseded", name="uq_cf_journal_slot"),
)

attempts = sa.Table(
    "cf_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("branch", sa.String(500), nullable=False, server_default=""),
    sa.Column("key", sa.String(500), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("next_at", sa.Float),  # when the next attempt may start (backoff, journaled)
    sa.Column("superseded", BigId, nullable=False, server_default="0"),
    sa.Index("ix_cf_attempts_run", "run_id", "branch", "key"),
)

signals = sa.Table(
    "cf_signals",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("payload", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("consumed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_cf_signals_run", "run_id", "name", "consumed"),
)

# --- on-chain submission (chain-agnostic) ---------------------------------------

# An account chain's conflict domain: the next nonce per (chain, sender).

nonces = sa.Table(
    "cf_nonces",
    metadata,
    sa.Column("chain", sa.String(100), primary_key=True),
    sa.Column("sender", sa.String(100), primary_key=True),
    sa.Column("next_nonce", sa.BigInteger, nullable=False),
)

submissions = sa.Table(
    "cf_submissions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("chain", sa.String(100), nullable=False),
    sa.Column("sender", sa.String(100), nullable=False),
    sa.Column("idempotency_key", sa.String(300), nullable=False),
    sa.Column("run_id", sa.String(36)),
    sa.Column("step", sa.String(600)),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("finality", sa.Text, nullable=False),
    sa.Column("nonce", sa.BigInteger),
    sa.Column("state", sa.String(20), nullable=False),  # a states.SubmissionState
    sa.Column("tx_hash", sa.String(100)),  # the attempt that was mined
    sa.Column("block_number", sa.BigInteger),
    sa.Column("block_hash", sa.String(100)),
    sa.Column("receipt", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("gap_fill", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_broadcast_at", sa.Float),
    sa.Column("last_broadcast_block", sa.BigInteger),
    # batching (v6): a batch row has batch_id = its own id, its members the batch's id
    sa.Column("batch_id", sa.BigInteger),
    # v6: when the fee budget (or the bump count) ran out with the tx still unmined
    sa.Column("stuck_since", sa.Float),
    sa.UniqueConstraint("chain", "sender", "idempotency_key", name="uq_cf_submission_key"),
    # v10: only the unique key may serve the lookup of an intent by (chain, sender,
    # key).  Before a table's first ANALYZE, Postgres costs every index whose leading
    # columns it constrains alike, and took (chain, sender, nonce) or (chain, state,
    # ...) instead: each new intent read every submission of its chain (2.7 ms at
    # 1,000).  So the state indexes lead with the state, the nonce index is partial.
    sa.Index("ix_cf_submissions_state", "state", "chain"),
    sa.Index("ix_cf_submissions_nonce", "chain", "sender", "nonce", sqlite_where=sa.text("nonce IS NOT NULL"),
             postgresql_where=sa.text("nonce IS NOT NULL")),
    # the tracker's per-head "stuck?" query must not scan every pending submission
    sa.Index("ix_cf_submissions_stuck", "state", "chain", "last_broadcast_block"),
    sa.Index("ix_cf_submissions_batch", "batch_id"),
    # v9: a run's submissions (the dashboard's run page, replay) without a scan
    sa.Index("ix_cf_submissions_run", "run_id"),
)

tx_attempts = sa.Table(
    "cf_tx_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("submission_id", BigId, nullable=False, index=True),
    sa.Column("chain", sa.String(100), nullable=False),
    sa.Column("tx_hash", sa.String(100), nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sa.Column("fees", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_cf_tx_attempts_hash", "chain", "tx_hash", unique=True),
)

# Runs that share an intent another run opened, by its idempotency key (v11): each
# journals the intent's receipt under its own step, so a reorg that un-finalises the
# intent rolls each of them back, and the intent is not abandoned while one of them
# still waits on it.  The opener is the intent's ``run_id``; it has no row here.
sharers = sa.Table(
    "cf_sharers",
    metadata,
    sa.Column("submission_id", BigId, primary_key=True),
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("step", sa.String(600), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Runs that gave up an intent they opened or shared (v12): stopped (cancelled, failed)
# while its payment was on the wire, each records here that it no longer wants it, in
# the transaction that decides whether it is the last to do so -- the one that undoes
# the payment once it settles (``chainstore.give_up``).
releases = sa.Table(
    "cf_releases",
    metadata,
    sa.Column("submission_id", BigId, primary_key=True),
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# A UTXO chain's conflict domain: the outpoints reserved for an intent (v5).  A row
# is written in the same transaction that moves the intent to "allocated".  It is
# *held* (``spent_at_block`` NULL) while any candidate may still be included, and
# deleted only when the intent is provably dead: it never signed (run ended first,
# permanent signing failure), or a foreign spend of its coins is final.  Once one of
# the intent's own candidates is final the row records the spend (``spent_at_block``,
# v6) instead of holding the coin, is held again if a reorg un-finalises it, and is
# pruned with the tracker's header window, below which no reorg is followed.
reservations = sa.Table(
    "cf_reservations",
    metadata,
    sa.Column("chain", sa.String(100), primary_key=True),
    sa.Column("outpoint", sa.String(200), primary_key=True),  # "txid:index"
    sa.Column("submission_id", BigId, nullable=False, index=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("spent_at_block", sa.BigInteger),
    sa.Index("ix_cf_reservations_spent", "chain", "spent_at_block"),
)

# --- head tracking and reorgs --------------------------------------------------

headers = sa.Table(
    "cf_headers",
    metadata,
    sa.Column("chain", sa.String(100), primary_key=True),
    sa.Column("hash", sa.String(100), primary_key=True),
    sa.Column("number", sa.BigInteger, nullable=False),
    sa.Column("parent_hash", sa.String(100), nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Column("orphaned", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_cf_headers_number", "chain", "number"),
)

reorgs = sa.Table(
    "cf_reorgs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("chain", sa.String(100), nullable=False),
    sa.Column("depth", sa.Integer, nullable=False),
    sa.Column("fork_number", sa.BigInteger, nullable=False),
    sa.Column("old_hashes", sa.Text, nullable=False),
    sa.Column("new_hashes", sa.Text, nullable=False),
    sa.Column("affected", sa.Text, nullable=False),
    sa.Column("detected_at", sa.Float, nullable=False),
)

# Workers announce the workflows they serve, so an operator can tell a run that waits
# for a free worker from one that no live worker can take.  Refreshed at a low rate
# (a third of the lease), deleted on a clean close; a killed worker's row outlives it
# until ``expires``.
workers = sa.Table(
    "cf_workers",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("workflows", sa.Text, nullable=False),  # JSON list of workflow names
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)

# Schedules (v8): the state of each schedule an app declares (``app.schedule``).  The
# trigger is recomputed from ``spec`` by the workers that declare it; the row holds what
# must be shared: the next fire time not yet started, and whether it is paused.
schedules = sa.Table(
    "cf_schedules",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON: the trigger and the missed-fire policy
    sa.Column("next_fire", sa.Float),  # NULL: recompute from now (new, resumed, spec changed)
    sa.Column("last_fire", sa.Float),  # the latest fire time a run was started for
    sa.Column("last_run_id", sa.String(36)),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", sa.Float, nullable=False),
)

leaders = sa.Table(
    "cf_leaders",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(100), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)

schema_version = sa.Table(
    "cf_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[t for t in metadata.sorted_tables if t is not schema_version])


# Append-only: a released migration is never edited, a new one is added.
def _v2(conn: sa.Connection) -> None:
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_cf_journal_run")


def _v3(conn: sa.Connection) -> None:
    """Indexes over ready_at and parent_id become partial (rows with a value only)."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_cf_runs_ready")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_cf_runs_parent_id")  # created full before v3
    for index in runs.indexes:  # as declared above, like everything _v1 creates
        if index.name in ("ix_cf_runs_ready_at", "ix_cf_runs_parent_id"):
            index.create(conn, checkfirst=True)


def _add_missing(conn: sa.Connection, table: sa.Table, names: tuple[str, ...]) -> None:
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in have:
            column = sa.schema.CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column}")


def _v4(conn: sa.Connection) -> None:
    """Runs count their recoveries (dead-lettering); workers announce what they serve.

    Both are declared above, so a database created by this version's ``_v1`` has them
    already: each is added only where missing."""
    _add_missing(conn, runs, ("recoveries",))
    workers.create(conn, checkfirst=True)


def _v5(conn: sa.Connection) -> None:
    """UTXO chains reserve coins per intent (``cf_reservations``); a database created by
    this version's ``_v1`` has the table already."""
    reservations.create(conn, checkfirst=True)


def _v6(conn: sa.Connection) -> None:
    """Batched payouts, stuck submissions, reservations that record their own spend."""
    _add_missing(conn, submissions, ("batch_id", "stuck_since"))
    _add_missing(conn, reservations, ("spent_at_block",))
    for index in (*submissions.indexes, *reservations.indexes):
        if index.name in ("ix_cf_submissions_batch", "ix_cf_reservations_spent"):
            index.create(conn, checkfirst=True)


def _v7(conn: sa.Connection) -> None:
    """A fork carries the code it runs instead of its registered code (``overrides``);
    a database created by this version's ``_v1`` has the column already."""
    _add_missing(conn, runs, ("overrides",))


def _v8(conn: sa.Connection) -> None:
    """Child runs name their slot in the parent (``parent_slot``); schedules
    (``cf_schedules``).  A database created by this version's ``_v1`` has both."""
    _add_missing(conn, runs, ("parent_slot",))
    schedules.create(conn, checkfirst=True)


def _v9(conn: sa.Connection) -> None:
    """Indexes for the dashboard: runs newest first (all, by status, by workflow, by
    both: (status, workflow) gains the creation order) and a run's submissions; a
    database created by this version's ``_v1`` has them already."""
    if "created_at" not in _index_columns(conn, "cf_runs", "ix_cf_runs_status_workflow"):
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_cf_runs_status_workflow")
    for index in (*runs.indexes, *submissions.indexes):
        if index.name in _V9_INDEXES:
            index.create(conn, checkfirst=True)


def _index_columns(conn: sa.Connection, table: str, name: str) -> list[str]:
    found = [i for i in sa.inspect(conn).get_indexes(table) if i["name"] == name]
    return [str(c) for c in found[0]["column_names"]] if found else []


_V9_INDEXES = ("ix_cf_runs_status_workflow", "ix_cf_runs_created", "ix_cf_runs_status_created",
               "ix_cf_runs_workflow_created", "ix_cf_submissions_run")


_V10_INDEXES = ("ix_cf_submissions_state", "ix_cf_submissions_nonce", "ix_cf_submissions_stuck")


def _v10(conn: sa.Connection) -> None:
    """The submissions' state indexes lead with the state and the nonce index becomes
    partial, so no planner takes them for the lookup by idempotency key."""
    for index in submissions.indexes:
        if index.name in _V10_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
            index.create(conn)


def _v11(conn: sa.Connection) -> None:
    """Runs sharing another run's intent are recorded (``cf_sharers``); a database
    created by this version's ``_v1`` has the table already."""
    sharers.create(conn, checkfirst=True)


def _v12(conn: sa.Connection) -> None:
    """Runs giving up a payment on the wire are recorded (``cf_releases``); a database
    created by this version's ``_v1`` has the table already."""
    releases.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, Callable[[sa.Connection], None]]] = [
    (1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5), (6, _v6), (7, _v7), (8, _v8), (9, _v9), (10, _v10),
    (11, _v11), (12, _v12)]
LATEST = MIGRATIONS[-1][0]
