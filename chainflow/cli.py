"""``chainflow`` command line: run workers and inspect, start, signal, cancel and retry runs;
replay, fork and export them (time travel); serve the web dashboard (``ui``).

Every expected failure (unknown or finished run, bad database URL, bad APP path, bad
JSON) prints one ``error: …`` line on stderr and exits 1: operators read these in a
terminal or a CI log, where a traceback hides the one sentence that matters.  Usage
mistakes keep click's exit code 2.

Only ``worker``, ``start``, ``replay`` and ``fork`` import user code.  Everything else reads the database
with a bare ``Chainflow(url)``: journal, status, signals and cancels need no registered
workflow, so an operator can inspect production runs without the app's dependencies.

Extension point: commands defined elsewhere attach with ``@cli.command()`` (or
``cli.add_command``); ``ChainflowGroup`` gives them the same one-line error handling and
``ctx.obj`` (a ``Target``) gives them the app without re-parsing the global options.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import sqlalchemy as sa
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .client.app import AttemptRecord, Chainflow, JournalEntry, RunStatus, ScheduleStatus
from .client.timeline import Sleep, attach_attempts, duration, sleep_of, when
from .clock import MAX_SECONDS
from .errors import ChainflowError
from .logs import FORMATS, announce
from .logs import configure as configure_logs
from .replay.diff import Difference
from .replay.report import Change, RunReport, SweepReport
from .runtime.worker import SHUTDOWN_GRACE
from .states import EntryState, RunState, SubmissionState
from .storage import codec
from .storage.connector import shown, sqlite_file

if TYPE_CHECKING:
    from .chain.adapter import ChainAdapter
    from .chain.runview import SubmissionView
    from .storage.database import Database

# Piped or redirected output is for grep, less and log files: never wrapped or cut to
# the 80 columns rich assumes without a terminal, nor its cells clipped (``_fit``).  Looked up at print time (not bound
# at import) so tests can swap in a console of their own.
console = Console() if sys.stdout.isatty() else Console(width=100_000, no_color=True)

# by text: runs and journal entries share some ("pending"), and the timeline adds its
# own labels for failed attempts ("retried") and steps in backoff ("retrying")
_STATUS_STYLE = {
    RunState.COMPLETED: "green", EntryState.OK: "green",
    RunState.FAILED: "red", RunState.DEAD_LETTERED: "bold red", EntryState.ERROR: "red", EntryState.TIMEOUT: "red",
    "retried": "red", RunState.CANCELLED: "yellow", EntryState.INVALIDATED: "dim",
    RunState.SLEEPING: "blue", RunState.WAITING: "blue", RunState.PENDING: "cyan", RunState.RUNNING: "cyan",
    "retrying": "cyan", SubmissionState.FINAL: "green", SubmissionState.INCLUDED: "cyan",
}
_OUTPUT_LIMIT = 80
_SUMMARY_LIMIT = 500


class CliError(click.ClickException):
    """One line on stderr, exit code 1, never a traceback."""

    def show(self, file: Any = None) -> None:
        # first line only: some driver messages span lines, and the contract is one line
        line = self.message.strip().splitlines()[0] if self.message.strip() else "unknown error"
        click.echo(f"error: {line}", err=True)


def fail(message: str) -> NoReturn:
    raise CliError(message)


class ChainflowGroup(click.Group):
    """Turns engine and database errors into ``CliError`` for every subcommand,
    including ones other modules add later, so none of them needs its own try/except."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ChainflowError as exc:
            raise CliError(str(exc)) from None
        except sa.exc.DBAPIError as exc:
            # environmental (locked file, not a database, connection dropped): no
            # traceback would help an operator more than the driver's own sentence
            target = ctx.obj.url_for_humans() if isinstance(ctx.obj, Target) else "the database"
            raise CliError(f"database error on {target}: {exc.orig}") from None
        except ValueError as exc:  # an argument refused by the engine's checks (name too long…)
            raise CliError(str(exc)) from None
        except OSError as exc:  # a node or server down, refused, timed out (adapters' errors included)
            raise CliError(f"{type(exc).__name__}: {exc}") from None


# --- loading the app -----------------------------------------------------------------


def load_app(spec: str) -> Chainflow:
    """Import ``module:attribute`` (like uvicorn), with the current directory importable.

    The attribute may be dotted (``pkg.mod:container.app``).  Import failures of user
    code become one-line errors: the exception type and message name what is missing.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        fail(f"APP must look like module:attribute, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure of user code
        fail(f"cannot import {module_name!r} (from APP {spec!r}): {type(exc).__name__}: {exc}")
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            fail(f"module {module_name!r} has no attribute {attr!r} (from APP {spec!r})")
    if not isinstance(obj, Chainflow):
        fail(f"{spec!r} is a {type(obj).__name__}, not a chainflow.Chainflow app")
    return obj


@dataclass
class Target:
    """What the global options point at; builds the app once, on first use, so that
    ``--help`` and usage errors never touch user code or the database."""

    app_spec: str | None
    database_url: str | None
    _app: Chainflow | None = field(default=None, repr=False)

    def app(self, *, must_exist: bool = True) -> Chainflow:
        """The app; ``must_exist`` refuses a SQLite file that is not there yet.

        Without that check a typo'd path would be created, migrated and reported as
        "no runs", which reads like data loss."""
        if self._app is None:
            app = load_app(self.app_spec) if self.app_spec else Chainflow(self.database_url)
            if must_exist:
                _require_sqlite_file(app)
            self._app = app
        return self._app

    def use(self, app: Chainflow) -> Chainflow:
        """A subcommand's own app (``worker APP``, ``ui APP``): the one an error names."""
        self._app = app
        return app

    def url_for_humans(self) -> str:
        if self._app is not None:
            return shown(self._app.engine.url)
        return repr(shown(self.database_url)) if self.database_url else "the database"


def _require_sqlite_file(app: Chainflow) -> None:
    url = app.engine.url
    if url.get_backend_name() == "sqlite" and url.database and not os.path.exists(path := sqlite_file(url)):
        fail(f"no chainflow database at {path!r} (database URL {app.database_url!r}); "
             "pass --database-url, set CHAINFLOW_DATABASE_URL, or run a worker first")


def _target(ctx: click.Context) -> Target:
    obj = ctx.find_object(Target)
    assert obj is not None, "the chainflow group always sets a Target"
    return obj


def json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON on stdout instead of a table (values decoded, amounts exact).")(fn)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=1))


def iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat()


def run_dict(r: RunStatus) -> dict[str, Any]:
    """A run as ``--json`` prints it: decoded input and output (``codec.readable``)."""
    return {"id": r.id, "workflow": r.workflow, "status": r.status.value, "input": codec.readable(r.input),
            "output": codec.readable(r.output), "error": _error_dict(r.error), "created_at": iso(r.created_at),
            "updated_at": iso(r.updated_at), "wake_at": iso(r.wake_at), "waiting_on": r.waiting_on,
            "cancel_requested": r.cancel_requested, "compensations": {k: v.value for k, v in r.compensations.items()},
            "rollback": r.rollback, "unserved": r.unserved, "parent": r.parent, "parent_step": r.parent_step,
            "forked_from": r.forked_from}


def _sleep_dict(sleep: Sleep | None) -> dict[str, Any]:
    """A sleep row's ``sleep`` key: when it was to wake, when the run left it, and what
    cut it short (``cancel``, a run status, or null)."""
    if sleep is None:
        return {}
    return {"sleep": {"wake_at": iso(sleep.wake_at), "left_at": iso(sleep.left_at),
                      "cut_short_by": sleep.cut_short_by}}


def _error_dict(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored error without its traceback (``show`` has the run's full record in ``export``)."""
    return None if error is None else {k: v for k, v in error.items() if k != "traceback"}


# --- commands --------------------------------------------------------------------------


@click.group(cls=ChainflowGroup)
@click.option("--app", "app_spec", envvar="CHAINFLOW_APP", metavar="MODULE:ATTR",
              help="Your Chainflow app (needed by `start`; optional elsewhere).  [env: CHAINFLOW_APP]")
@click.option("--database-url", envvar="CHAINFLOW_DATABASE_URL", metavar="URL",
              help="Database to inspect without importing your code.  [env: CHAINFLOW_DATABASE_URL]")
@click.version_option(package_name="chainflow")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, database_url: str | None) -> None:
    """Durable, blockchain-aware payment workflows."""
    explicit = click.core.ParameterSource.COMMANDLINE
    app_given = app_spec is not None and ctx.get_parameter_source("app_spec") is explicit
    url_given = database_url is not None and ctx.get_parameter_source("database_url") is explicit
    if app_given and url_given:
        # the app carries its own URL; silently ignoring one of the two would inspect
        # a different database than the operator believes
        raise click.UsageError("give --app or --database-url, not both")
    if url_given:
        app_spec = None  # an explicit URL beats an app named only in the environment
    ctx.obj = Target(app_spec, None if app_spec else database_url)


@cli.command()
@click.argument("app_spec", metavar="APP")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1),
              help="Runs executed at once by this process.")
@click.option("--lease", type=click.FloatRange(0, MAX_SECONDS, min_open=True), metavar="SECONDS",
              help="Lease on claimed runs; another worker takes a run over after this long "
                   "without heartbeats.  [default: the app's lease_seconds]")
@click.option("--shutdown-grace", type=click.FloatRange(0, MAX_SECONDS), default=SHUTDOWN_GRACE, show_default=True,
              metavar="SECONDS",
              help="On SIGINT/SIGTERM, how long to wait for steps running in threads (which cannot be "
                   "stopped) to finish and be journaled before their runs are handed back; past it, or on "
                   "a second SIGINT/SIGTERM, the worker exits and leaves those runs leased until their "
                   "lease expires.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (0: any free port, printed).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, metavar="HOST",
              help="Interface the metrics endpoint listens on.")
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
              help="json: one JSON object a line, with run_id, workflow, step, chain, tx_hash fields.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="info", show_default=True, help="debug adds a line per step.")
def worker(app_spec: str, concurrency: int, lease: float | None, shutdown_grace: float, metrics_port: int | None,
           metrics_host: str, log_format: str, log_level: str) -> None:
    """Run a worker for APP (module:attribute) until SIGINT/SIGTERM, which stops it
    claiming and hands the runs in flight back (another worker resumes them from their
    journal): at once, except a run whose step runs in a thread, which is handed back
    once the step has returned and is journaled (see --shutdown-grace)."""
    for name, value in (("--lease", lease), ("--shutdown-grace", shutdown_grace)):
        if value is not None and value != value:  # FloatRange lets NaN through (it compares false)
            raise click.BadParameter(f"{value!r} is not a number of seconds", param_hint=f"'{name}'")
    configure_logs(log_format, log_level)
    app = _target(click.get_current_context()).use(load_app(app_spec))
    app.ensure_schema()  # fail on a bad database before announcing anything
    names = app.registry.names()
    if not names:
        announce(f"{app_spec} registers no workflows; this worker will execute nothing", logging.WARNING)
    announce(f"chainflow worker: {shown(app.engine.url)}, "
             f"concurrency {concurrency}, workflows: {', '.join(sorted(names)) or '-'}")
    server = None
    if metrics_port is not None:
        from .storage.gauges import serve

        server, _ = serve(app.database, metrics_port, metrics_host)
        announce(f"chainflow worker: metrics on http://{metrics_host}:{server.server_port}/metrics")
    options: dict[str, Any] = {"shutdown_grace": shutdown_grace}
    if lease is not None:
        options["lease"] = lease
    try:
        app.run_worker(concurrency=concurrency, **options)
    finally:
        if server is not None:
            server.shutdown()


@cli.command()
@click.argument("workflow")
@click.option("--input", "input_json", default="null", metavar="JSON", help="Workflow input as JSON.")
@click.option("--key", "idempotency_key", metavar="KEY",
              help="Idempotency key: starting again with the same key returns the same run.")
@click.pass_context
def start(ctx: click.Context, workflow: str, input_json: str, idempotency_key: str | None) -> None:
    """Start WORKFLOW and print the run id (needs --app: input is validated by your code)."""
    target = _target(ctx)
    if not target.app_spec:
        raise click.UsageError("start needs --app MODULE:ATTR (or CHAINFLOW_APP) to know WORKFLOW's input type")
    payload = parse_json(input_json, "--input")
    handle = target.app(must_exist=False).start(workflow, payload, idempotency_key=idempotency_key)
    click.echo(handle.id)  # stdout carries only the id, for RUN=$(chainflow start …)
    if not handle.created:
        click.echo(f"note: key {idempotency_key!r} already started this run; nothing new was started", err=True)


@cli.command()
@click.option("--status", type=click.Choice([s.value for s in RunState], case_sensitive=False),
              help="Only runs in this status.")
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="At most this many, newest first.")
@json_option
@click.pass_context
def runs(ctx: click.Context, status: str | None, workflow: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    found = _target(ctx).app().runs(status=status, workflow=workflow, limit=limit)
    if as_json:
        print_json([run_dict(r) for r in found])
    else:
        console.print(runs_table(found))


@cli.command()
@click.argument("run_id", metavar="RUN")
@json_option
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """RUN's timeline: steps in order, attempts, durations, outputs or errors,
    compensations, and its on-chain submissions with their confirmations."""
    from .chain.runview import of_run

    app = _target(ctx).app()
    st = app.status(run_id)  # first: an unknown id fails here with RunNotFoundError
    journal, attempts, subs = app.journal(run_id), app.attempts(run_id), app.read(of_run, run_id)
    if not as_json:
        console.print(timeline(st, journal, attempts, subs, app.children(run_id)))
        return
    print_json({
        "run": run_dict(st),
        "journal": [{"branch": e.branch, "position": e.position, "step": e.key, "kind": e.kind,
                     "status": e.status.value, "output": codec.readable(e.output), "error": _error_dict(e.error),
                     "attempts": e.attempts, "started_at": iso(e.started_at), "finished_at": iso(e.finished_at),
                     "invalidated": e.invalidated, "reason": e.reason, **_sleep_dict(sleep_of(e, journal, st))}
                    for e in journal],
        "failed_attempts": [{"branch": a.branch, "step": a.key, "attempt": a.attempt, "error": _error_dict(a.error),
                             "started_at": iso(a.started_at), "finished_at": iso(a.finished_at),
                             "next_at": iso(a.next_at)} for a in attempts],
        "submissions": [dataclasses.asdict(v) for v in subs],
        "children": [run_dict(c) for c in app.children(run_id)],
    })


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.argument("name")
@click.option("--payload", default="null", metavar="JSON", help="Signal payload as JSON.")
@click.pass_context
def signal(ctx: click.Context, run_id: str, name: str, payload: str) -> None:
    """Send signal NAME to RUN (what ctx.wait_for(NAME) receives)."""
    value = parse_json(payload, "--payload")  # before the database: a typo costs nothing
    _target(ctx).app().signal(run_id, name, value)
    click.echo(f"signal {name!r} sent to run {run_id}")


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.pass_context
def cancel(ctx: click.Context, run_id: str) -> None:
    """Request cancellation of RUN; a worker stops it and runs its compensations."""
    _target(ctx).app().cancel(run_id)
    click.echo(f"cancel requested for run {run_id}")


@cli.command()
@json_option
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """List schedules: trigger, missed-fire policy, paused, next and last fire."""
    found = _target(ctx).app().list_schedules()
    if as_json:
        print_json([{**dataclasses.asdict(s), "next_fire": iso(s.next_fire), "last_fire": iso(s.last_fire)}
                    for s in found])
    else:
        console.print(schedules_table(found))


@cli.command()
@click.argument("action", type=click.Choice(["pause", "resume"]))
@click.argument("name")
@click.pass_context
def schedule(ctx: click.Context, action: str, name: str) -> None:
    """Pause schedule NAME (runs it started go on), or resume it from its next fire time
    after now (the paused fires are not made up)."""
    app = _target(ctx).app()
    (app.pause_schedule if action == "pause" else app.resume_schedule)(name)
    click.echo(f"schedule {name!r} {action}d")


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.pass_context
def retry(ctx: click.Context, run_id: str) -> None:
    """Put dead-lettered RUN back to pending (recovery count reset); it resumes from its journal."""
    _target(ctx).app().retry(run_id)
    click.echo(f"run {run_id} is pending again")


T = TypeVar("T")


def _chain_health(app: Chainflow, report: Callable[[Database, dict[str, ChainAdapter]], Awaitable[list[T]]],
                  snapshot: Callable[[sa.Connection], list[T]]) -> list[T]:
    """The database's view joined with the chains' own (``report``), or the database's
    alone (``snapshot``) when the app configures no chain."""
    if not app.chains:
        return app.read(snapshot)

    async def ask_chains() -> list[T]:
        try:
            return await report(app.database, app.chains)
        finally:  # HTTP sessions belong to this loop: close them, failure or not
            for adapter in app.chains.values():
                await adapter.aclose()

    try:
        return asyncio.run(ask_chains())
    except ValueError as exc:  # adapters raise ValueError naming bad key material or config
        fail(str(exc))


def _chain_view(ctx: click.Context, command: str) -> Chainflow:
    """The app for a chain-health command; without configured chains only the database
    can answer, which the operator is told (on stderr: stdout stays parseable)."""
    app = _target(ctx).app()
    if not app.chains:
        click.echo(f"note: showing the database's view only; the chain's own numbers need --app MODULE:ATTR "
                   f"(or CHAINFLOW_APP) naming an app that configures its chains, e.g. "
                   f"chainflow --app myproject.flows:app {command}", err=True)
    return app


@cli.command()
@json_option
@click.pass_context
def nonces(ctx: click.Context, as_json: bool) -> None:
    """Nonce health per (chain, sender): next nonce, the chain's counts, in flight, gaps."""
    from .chain.nonces import report, snapshot

    rows = _chain_health(_chain_view(ctx, "nonces"), report, snapshot)
    if as_json:
        print_json([{**dataclasses.asdict(r), "gap_fills": [[n, s.value] for n, s in r.gap_fills]} for r in rows])
        return
    if not rows:
        console.print(Text("no nonce allocated yet (no submission on an account chain)", style="dim"))
        return
    table = Table("chain", "sender", "next", "chain latest", "chain pending", "in flight", "gaps", "gap fills")
    for r in rows:
        table.add_row(Text(r.chain), Text(r.sender), str(r.next_nonce), _opt(r.chain_latest), _opt(r.chain_pending),
                      _ranges(r.in_flight), Text(_ranges(r.gaps), style="red" if r.gaps else ""),
                      Text(", ".join(f"{n}:{s}" for n, s in r.gap_fills)))
    console.print(table)


@cli.command()
@json_option
@click.pass_context
def coins(ctx: click.Context, as_json: bool) -> None:
    """Coin health per UTXO chain: reserved coins and their owner intents, the wallet's
    coins on chain, and what new payouts can spend."""
    from .chain.coins import report, snapshot

    rows = _chain_health(_chain_view(ctx, "coins"), report, snapshot)
    if as_json:
        print_json([dataclasses.asdict(c) for c in rows])
        return
    summary = Table("chain", "wallet", "coins on chain", "value on chain", "reserved", "reserved value", "spendable")
    held = Table("chain", "outpoint", "value", "owner key", "owner state", "run")
    for c in rows:
        summary.add_row(Text(c.chain), Text(c.sender or "-"), _opt(c.on_chain), _opt(c.on_chain_value),
                        str(len(c.reserved)), str(c.reserved_value), _opt(c.spendable))
        for r in c.reserved:
            held.add_row(Text(c.chain), Text(r.outpoint), str(r.value),
                         Text(r.owner_key + (" (batch)" if r.batch else "")), Text(r.owner_state), Text(r.run_id or "-"))
    console.print(summary)
    console.print(held if any(c.reserved for c in rows) else Text("no coin is reserved", style="dim"))


@cli.command()
@click.option("--chain", metavar="NAME", help="Only this chain's reorgs.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="At most this many, newest first.")
@json_option
@click.pass_context
def reorgs(ctx: click.Context, chain: str | None, limit: int, as_json: bool) -> None:
    """Reorganisations the trackers detected, newest first: depth, fork point, and the
    transactions they knocked out of the chain."""
    found = _target(ctx).app().reorgs(chain, limit)
    if as_json:
        print_json([{**dataclasses.asdict(r), "detected_at": iso(r.detected_at)} for r in found])
        return
    if not found:
        console.print(Text("no reorg recorded", style="dim"))
        return
    table = Table("id", "chain", "depth", "fork at", "detected (UTC)", "transactions knocked out",
                  title=f"{len(found)} reorg(s), newest first", title_justify="left")
    for r in found:
        table.add_row(str(r.id), Text(r.chain), str(r.depth), str(r.fork_number), when(r.detected_at),
                      Text("\n".join(h for h in r.affected_txs if h) or "-"))
    console.print(table)


@cli.command()
@json_option
@click.pass_context
def heads(ctx: click.Context, as_json: bool) -> None:
    """Per chain, the head the trackers follow (height, block time, age) and, with an
    --app that configures the chain, the node's head and the lag in blocks."""
    from .storage.gauges import followed_heads

    app = _chain_view(ctx, "heads")
    followed = {chain: (number, stamp) for chain, number, stamp in app.read(followed_heads)}
    node: dict[str, int | str] = {}
    if app.chains:
        node = asyncio.run(_node_heads(app))
    now = time.time()
    rows = []
    for chain in sorted(set(followed) | set(node)):
        number, stamp = followed.get(chain, (None, None))
        at_node = node.get(chain)
        rows.append(HeadRow(chain, number, stamp, None if stamp is None else round(max(0.0, now - stamp), 3),
                            at_node if isinstance(at_node, int) else None,
                            at_node if isinstance(at_node, str) else None))
    if as_json:
        print_json([{**dataclasses.asdict(r), "block_time": iso(r.block_time), "lag_blocks": r.lag_blocks}
                    for r in rows])
        return
    if not rows:
        console.print(Text("no head followed yet: a worker with chains configured follows them", style="dim"))
        return
    table = Table("chain", "followed head", "block time (UTC)", "age", "node head", "lag (blocks)")
    for r in rows:
        lag = r.lag_blocks
        table.add_row(Text(r.chain), _opt(r.followed), when(r.block_time),
                      "" if r.age_seconds is None else duration(0, r.age_seconds),
                      Text(_opt(r.node)) if r.node_error is None else Text(r.node_error, style="red"),
                      Text(_opt(lag), style="yellow" if lag is not None and lag > 3 else ""))
    console.print(table)


@dataclass(frozen=True)
class HeadRow:
    chain: str
    followed: int | None  # highest block the trackers stored
    block_time: float | None  # its timestamp
    age_seconds: float | None
    node: int | None = None  # the node's head, when --app configures the chain
    node_error: str | None = None  # why the node did not answer

    @property
    def lag_blocks(self) -> int | None:
        return None if self.node is None or self.followed is None else self.node - self.followed


async def _node_heads(app: Chainflow) -> dict[str, int | str]:
    """Each configured chain's head number, or the error that kept it from answering."""
    out: dict[str, int | str] = {}
    for name, adapter in app.chains.items():
        try:
            out[name] = (await adapter.head()).number
        except Exception as exc:  # noqa: BLE001 - a node down is a row, not the command's failure
            out[name] = f"{type(exc).__name__}: {exc}"
        finally:
            await adapter.aclose()
    return out


@cli.command()
@click.pass_context
def metrics(ctx: click.Context) -> None:
    """Runs, submissions and reorgs from the database, in Prometheus text format."""
    from .metrics import exposition
    from .storage.gauges import database_series

    click.echo(exposition(_target(ctx).app().read(database_series)), nl=False)


@cli.command()
@click.argument("app_spec", metavar="[APP]", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but a loopback address exposes the dashboard to the network.")
@click.option("--port", default=8321, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="CHAINFLOW_UI_TOKEN", metavar="TOKEN", show_envvar=True,
              help="Allow actions (signal, cancel, retry) to whoever types this token (12+ characters); "
                   "without it the dashboard is read-only.")
@click.pass_context
def ui(ctx: click.Context, app_spec: str | None, host: str, port: int, token: str | None) -> None:
    """Serve the web dashboard over APP's database (or the global --database-url): runs,
    timelines, submissions with live confirmations, chains and reorgs, charts."""
    try:
        import uvicorn

        from .ui.security import check_token
        from .ui.server import create_app
    except ModuleNotFoundError as exc:
        fail(f"the dashboard needs the ui extra (pip install 'chainflow[ui]'): {exc.name} is not installed")
    try:
        token = check_token(token)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--token'") from None
    app = _target(ctx).use(load_app(app_spec)) if app_spec else _target(ctx).app()
    _require_sqlite_file(app)
    app.ensure_schema()  # fail on a bad database before serving anything
    mode = "actions allowed with the token" if token else "read-only (no --token)"
    click.echo(f"chainflow ui: http://{host}:{port}/ over {shown(app.engine.url)}, "
               f"{mode}", err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: bound to {host}: anyone who can reach it can read every run", err=True)
    uvicorn.run(create_app(app, token=token), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=2)


# --- time travel: replay, fork, export ------------------------------------------------

# a replay that found changes exits with this status (errors exit 1, usage mistakes 2):
# a CI job tells "the new code changes history" from "the replay could not run"
CHANGED_EXIT = 3
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_overrides(values: Sequence[str]) -> dict[str, str]:
    """``--override STEP=MODULE:FUNCTION`` options as {step: "module:function"}."""
    found: dict[str, str] = {}
    for value in values:
        step, sep, spec = value.partition("=")
        if not sep or not step or ":" not in spec:
            raise click.BadParameter(f"{value!r} must look like STEP=MODULE:FUNCTION", param_hint="'--override'")
        if step in found:
            raise click.BadParameter(f"step {step!r} is overridden twice", param_hint="'--override'")
        found[step] = spec
    return found


def parse_since(text: str | None, option: str = "--since") -> float | dt.timedelta | None:
    """``--since`` (or ``option``): a span back from now (``90s``, ``30m``, ``12h``,
    ``7d``, ``2w``) or an ISO 8601 time with its zone."""
    if text is None:
        return None
    hint = f"'{option}'"
    number, unit = text[:-1], text[-1:].lower()
    if unit in _UNITS and number.isdigit():
        try:
            return dt.timedelta(seconds=int(number) * _UNITS[unit])
        except OverflowError:
            raise click.BadParameter(f"{text!r} is longer than any time chainflow can go back",
                                     param_hint=hint) from None
    try:
        when_ = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a span like 7d, 12h, 30m nor an ISO time",
                                 param_hint=hint) from None
    if when_.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone (add +00:00 or Z)", param_hint=hint)
    return when_.timestamp()


def _user_code(target: Target, command: str) -> Chainflow:
    """The app of a command that runs user code (replay, fork): its workflows and chains,
    with the current directory importable for ``--override`` / ``--workflow`` paths."""
    if not target.app_spec:
        raise click.UsageError(f"{command} needs --app MODULE:ATTR (or CHAINFLOW_APP): it runs your workflow code")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return target.app()


def _selection(run_id: str | None, workflow_name: str | None, status: str | None, since: str | None) -> bool:
    """True for a selection of runs (filters), False for one RUN; refuses both or neither."""
    filters = workflow_name is not None or status is not None or since is not None
    if run_id is not None and filters:
        raise click.UsageError("give RUN or a selection (--workflow-name, --status, --since), not both")
    if run_id is None and not filters:
        raise click.UsageError("give RUN, or select runs with --workflow-name, --status and/or --since")
    return filters


def _progress(label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


_SELECTION_OPTIONS = [
    click.option("--workflow-name", metavar="NAME", help="Select runs of this workflow (instead of RUN)."),
    click.option("--status", type=click.Choice([s.value for s in RunState], case_sensitive=False),
                 help="Select runs in this status."),
    click.option("--since", metavar="SPAN|TIME", help="Select runs created since: 7d, 12h, 30m, or an ISO time."),
    click.option("--override", "overrides", multiple=True, metavar="STEP=MODULE:FUNCTION",
                 help="Swap the function ctx.step(STEP, ...) calls (repeatable)."),
    click.option("--workflow", "workflow_spec", metavar="MODULE:FUNCTION", help="Swap the workflow function."),
]


def _with_selection(fn: Any) -> Any:
    for option in reversed(_SELECTION_OPTIONS):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@_with_selection
@click.option("--sample", type=click.IntRange(1), metavar="N", help="Replay a random sample of N selected runs.")
@click.option("--pure", multiple=True, metavar="STEP",
              help="STEP's code has no side effects: it may run in the replay (repeatable).")
@click.option("--allow-effects", is_flag=True, help="Run effectful new code too (else reported as \"would run\").")
@click.option("--allow-changes", is_flag=True, help=f"Exit 0 even when something changed (else {CHANGED_EXIT}).")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON on stdout.")
@click.pass_context
def replay(ctx: click.Context, run_id: str | None, workflow_name: str | None, status: str | None,
           since: str | None, overrides: tuple[str, ...], workflow_spec: str | None, sample: int | None,
           pure: tuple[str, ...], allow_effects: bool, allow_changes: bool, as_json: bool) -> None:
    """Re-run RUN (or a selection of runs) against current or swapped code, against a
    copy of its history: nothing is written, signed, broadcast or signalled.  Reports
    per step what changed; exits 3 when anything did (a CI regression gate)."""
    swaps = parse_overrides(overrides)
    span = parse_since(since)
    sweep_ = _selection(run_id, workflow_name, status, since)
    if sample is not None and not sweep_:
        raise click.UsageError("--sample selects among runs: use it with --workflow-name, --status or --since")
    app = _user_code(_target(ctx), "replay")
    options: dict[str, Any] = dict(overrides=swaps, workflow=workflow_spec, pure=pure, allow_effects=allow_effects)
    changed: bool
    if not sweep_:
        assert run_id is not None
        report = app.replay(run_id, **options)
        changed = report.changed
        if as_json:
            click.echo(report.to_json())
        else:
            console.print(replay_table(report))
    else:
        with _progress("replaying") as bar:
            task = bar.add_task("replay", total=None)
            found = app.replay_sweep(workflow_name=workflow_name, status=status, since=span, sample=sample,
                                     progress=lambda done, total: bar.update(task, completed=done, total=total),
                                     **options)
        changed = found.changed
        if as_json:
            click.echo(json.dumps(found.to_dict(), indent=1))
        else:
            console.print(sweep_table(found))
    if changed and not allow_changes:
        ctx.exit(CHANGED_EXIT)


@cli.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@_with_selection
@click.option("--from-step", metavar="STEP", help="Fork point: this step (name, name#2, branch/name).")
@click.option("--from-failed", is_flag=True, help="Fork point: the first failed step.")
@click.option("--after", metavar="TIME", help="Fork point: the first step started at or after this ISO time.")
@click.pass_context
def fork(ctx: click.Context, run_id: str | None, workflow_name: str | None, status: str | None, since: str | None,
         overrides: tuple[str, ...], workflow_spec: str | None, from_step: str | None, from_failed: bool,
         after: str | None) -> None:
    """Start a new live run from RUN (or from each selected run but forks, once: an
    interrupted bulk fork resumes) that reuses the recorded steps before the fork point and executes
    from there with current or swapped code.  Prints the new run ids."""
    swaps = parse_overrides(overrides)
    span = parse_since(since)
    bulk = _selection(run_id, workflow_name, status, since)
    if sum((from_step is not None, from_failed, after is not None)) != 1:
        raise click.UsageError("give exactly one fork point: --from-step, --from-failed or --after")
    point = parse_since(after, "--after") if after is not None else None
    if isinstance(point, dt.timedelta):
        raise click.BadParameter("--after takes an ISO time with its zone, not a span", param_hint="'--after'")
    app = _user_code(_target(ctx), "fork")
    options: dict[str, Any] = dict(from_step=from_step, from_failed=from_failed, after=point, overrides=swaps,
                                   workflow=workflow_spec)
    if not bulk:
        assert run_id is not None
        click.echo(app.fork(run_id, **options).id)
        return
    with _progress("forking") as bar:
        task = bar.add_task("fork", total=None)
        summary = app.fork_many(workflow_name=workflow_name, status=status, since=span,
                                progress=lambda done, total: bar.update(task, completed=done, total=total), **options)
    for source, forked in summary.created.items():
        click.echo(forked)
    click.echo(f"{len(summary.created)} fork(s) created, {len(summary.skipped)} run(s) skipped", err=True)
    for source, why in summary.skipped.items():
        click.echo(f"  skipped {source}: {why}", err=True)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.pass_context
def export(ctx: click.Context, run_id: str) -> None:
    """RUN's whole history as JSON on stdout (chainflow export RUN > run.json): what
    `replay` and chainflow.testing.replay_history take back, exact to the last wei."""
    click.echo(_target(ctx).app().export(run_id))


# --- rendering (pure functions of the client API's records, so tests need no DB) --------


def runs_table(found: Sequence[RunStatus]) -> RenderableType:
    if not found:
        return Text("no runs match", style="dim")
    table = Table(title=f"{len(found)} run(s), newest first; times UTC", title_justify="left")
    # ids are what operators copy into `show`: never wrap or elide them
    table.add_column("id", no_wrap=True, min_width=36)
    for name in ("workflow", "status", "created", "updated", "waiting on"):
        table.add_column(name)
    for r in found:
        status = status_text(r.status)
        if r.cancel_requested and not r.done:
            status.append(" (cancel requested)", style="yellow")
        if r.unserved:
            status.append(" (no live worker serves it)", style="yellow")
        table.add_row(r.id, Text(r.workflow), status, when(r.created_at), when(r.updated_at), Text(_waiting(r)))
    return table


def schedules_table(found: Sequence[ScheduleStatus]) -> RenderableType:
    if not found:
        return Text("no schedules recorded (a worker of the app that declares them records them)", style="dim")
    table = Table(title=f"{len(found)} schedule(s); times UTC", title_justify="left")
    for name in ("name", "workflow", "trigger", "missed fires", "state", "next fire", "last fire", "last run"):
        table.add_column(name, no_wrap=name == "last run")
    for s in found:
        spec = s.spec
        trigger = f"cron {spec['cron']} ({spec['timezone']})" if spec.get("cron") else f"every {spec['every']:g}s"
        policy = f"{spec['missed']}" + (f" (at most {spec['max_missed']})" if spec["missed"] == "all" else "")
        state = Text("paused", style="yellow") if s.paused else Text("active", style="green")
        table.add_row(Text(s.name), Text(s.workflow), Text(trigger), Text(policy), state,
                      when(s.next_fire) if not s.paused else "", when(s.last_fire), s.last_run_id or "")
    return table


_CHANGE_STYLE: dict[str, str] = {
    Change.UNCHANGED: "green", Change.OUTPUT_CHANGED: "yellow", Change.ERROR_CHANGED: "red",
    Change.TX_CHANGED: "bold yellow", Change.NEW: "cyan", Change.MISSING: "magenta", Change.DIVERGENCE: "bold red",
    Change.WOULD_RUN: "blue", Change.NOT_REACHED: "dim",
}


def replay_table(report: RunReport) -> RenderableType:
    """A run's replay: header, one row per operation (differences and transactions under
    it), and what became of the run's own result."""
    verdict = Text("changed", style="bold yellow") if report.changed else Text("unchanged", style="green")
    header = Text.assemble(("replay of run ", "bold"), (report.run_id, "bold"), "  workflow ",
                           Text(report.workflow, style="bold"), "  ", verdict)
    header.append(f"\nrecorded {report.recorded_status}, replayed {report.replayed_status}", style="dim")
    if report.divergence:
        header.append(f"\nfirst divergence {report.divergence}", style="bold red")
    table = Table("step", "op", "change", "detail", title="operations, in the order the new code asked for them",
                  title_justify="left")
    for s in report.steps:
        table.add_row(Text(s.label), Text(s.op), Text(s.change.value, style=_CHANGE_STYLE.get(s.change, "")),
                      Text(s.detail))
        for d in s.diff:
            table.add_row("", "", "", Text(_difference(d), style="yellow"))
        if s.tx is not None:
            table.add_row("", "", "", Text(f"recorded: {short(s.tx.recorded, _SUMMARY_LIMIT)}  key {s.tx.recorded_key}"))
            table.add_row("", "", "", Text(f"new:      {short(s.tx.replayed, _SUMMARY_LIMIT)}  key {s.tx.replayed_key}"))
            sim = s.tx.simulation
            table.add_row("", "", "", Text(
                f"simulated at block {sim['block_number']}: {'succeeds' if sim['succeeded'] else 'reverts'} "
                f"({_fit(str(sim['detail']), _OUTPUT_LIMIT)})" if sim is not None else
                f"not simulated: {s.tx.not_simulated}", style="cyan" if sim is not None else "dim"))
    footer = Text()
    for d in report.output_diff:
        footer.append(f"run output {_difference(d)}\n", style="yellow")
    if report.error_changed:
        footer.append(f"run error {report.error_changed}\n", style="red")
    for inv in report.invalidated:
        footer.append(f"recorded reorg invalidation: {inv['step']} ({inv['reason'] or 'no reason recorded'})\n",
                      style="dim")
    return Group(header, table, footer)


def _difference(d: Difference) -> str:
    return f"{d.path or '$'} {d.edit.value}: {short(d.recorded, _SUMMARY_LIMIT)} -> {short(d.replayed, _SUMMARY_LIMIT)}"


def sweep_table(found: SweepReport) -> RenderableType:
    """A sweep's summary: how many runs show each kind of change, a few of their ids."""
    runs_ = len(found.reports) + len(found.failures)
    changed = sum(r.changed for r in found.reports)
    header = Text(f"{runs_} run(s) replayed: {changed} changed, {len(found.failures)} could not be replayed",
                  style="bold yellow" if found.changed else "green")
    table = Table("change", "runs", "for example", title="grouped by kind of change", title_justify="left")
    for kind, ids in sorted(found.by_change().items()):
        table.add_row(Text(kind, style=_CHANGE_STYLE.get(kind, "yellow")), str(len(ids)), ", ".join(ids[:3]))
    for run_id, why in list(found.failures.items())[:10]:
        table.add_row(Text("not replayed", style="red"), "", Text(f"{run_id}: {why}"))
    return Group(header, table)


def timeline(st: RunStatus, journal: Sequence[JournalEntry], attempts: Sequence[AttemptRecord],
             subs: Sequence[SubmissionView] = (), children: Sequence[RunStatus] = ()) -> RenderableType:
    """Header, one row per journal entry (with its failed attempts beneath it), the
    run's submissions, the child runs it started, summary."""
    header = Text.assemble(("run ", "bold"), (st.id, "bold"), "  workflow ", Text(st.workflow, style="bold"),
                           "  ", status_text(st.status))
    header.append(f"\ncreated {when(st.created_at)}  updated {when(st.updated_at)} (UTC)", style="dim")
    header.append(f"\ninput {short(st.input, _SUMMARY_LIMIT)}", style="dim")
    if st.parent is not None:
        header.append(f"\nchild of run {st.parent} (its step {st.parent_step})", style="dim")
    if st.forked_from is not None:
        header.append(f"\nforked from run {st.forked_from}", style="dim")

    table = Table("branch", "pos", "step", "kind", "status", "tries", "duration", "output / error",
                  title="timeline (journal order; struck-through rows were invalidated)", title_justify="left")
    by_entry, unmatched = attach_attempts(journal, attempts)
    for i, e in enumerate(journal):
        compensation = e.kind == "compensation"
        row_style = "strike dim" if e.invalidated else ("magenta" if compensation else "")
        # an invalidated row reports status "invalidated" but keeps the output it had
        shows_output = e.status == EntryState.OK or (e.invalidated and e.output is not None)
        detail = error_text(e.error) if e.error else Text(short(e.output) if shows_output else "")
        took = duration(e.started_at, e.finished_at)
        sleep = sleep_of(e, journal, st)
        if sleep is not None:
            took, detail = duration(e.started_at, sleep.left_at), _sleep_text(sleep)
        if e.invalidated:
            detail = Text.assemble(("INVALIDATED", "bold"), f" ({e.reason or 'no reason recorded'}) ", detail)
        table.add_row(
            Text(e.branch or "-"), str(e.position) if e.position >= 0 else "comp" if compensation else "-",
            Text(("<- " if compensation else "") + e.key), Text(e.kind),
            status_text(e.status), str(e.attempts), took, detail,
            style=row_style,
        )
        for a in by_entry.get(i, []):
            table.add_row(*_attempt_cells(a), style="dim strike" if e.invalidated else "dim")
    # failed attempts of a step still in backoff: no journal row exists until it settles
    for (branch, key), tries in unmatched.items():
        table.add_row(Text(branch or "-"), "", Text(key), "step", status_text("retrying"), str(len(tries)), "",
                      Text(f"next attempt {when(tries[-1].next_at)}" if tries[-1].next_at else ""))
        for a in tries:
            table.add_row(*_attempt_cells(a), style="dim")

    parts: list[RenderableType] = [header, table]
    if subs:
        parts.append(submissions_table(subs))
    if children:
        kids = Table("step", "child run", "workflow", "status", title="child runs (ctx.child)", title_justify="left")
        for c in children:
            kids.add_row(Text(c.parent_step or ""), Text(c.id, no_wrap=True), Text(c.workflow), status_text(c.status))
        parts.append(kids)
    return Group(*parts, _summary(st))


def submissions_table(subs: Sequence[SubmissionView]) -> RenderableType:
    """One row per on-chain intent: its versions' hashes (the mined one marked), its
    nonce or coins, and how far it is from final."""
    table = Table("step", "chain", "state", "nonce / coins", "confirmations", "tx hash(es)",
                  title="submissions (confirmations as of the head the trackers follow)", title_justify="left")
    for v in subs:
        hashes = Text()
        for i, h in enumerate(v.tx_hashes):
            hashes.append(("\n" if i else "") + h, style="bold" if h == v.mined_tx else "dim")
        where = str(v.nonce) if v.nonce is not None else ", ".join(v.coins) or "-"
        state = status_text(v.state)
        if v.stuck_since is not None and v.state not in (SubmissionState.FINAL, SubmissionState.FAILED):
            state.append(" (stuck: fee budget spent)", style="yellow")
        if v.error:
            state.append(f" {_fit(v.error, _OUTPUT_LIMIT)}", style="red")
        seen = f"{v.confirmations} of {v.required}" if v.block_number is not None else f"0 of {v.required}"
        table.add_row(Text(v.step or "-"), Text(v.chain), state, Text(where), seen, hashes)
    return table


def _sleep_text(sleep: Sleep) -> Text:
    if sleep.cut_short_by == "cancel":
        return Text(f"interrupted by cancel at {when(sleep.left_at)} (was to wake {when(sleep.wake_at)})",
                    style="yellow")
    if sleep.cut_short_by is not None:
        return Text(f"cut short at {when(sleep.left_at)}: run {sleep.cut_short_by} (was to wake "
                    f"{when(sleep.wake_at)})", style="yellow")
    return Text(f"{'sleeping until' if sleep.left_at is None else 'woke'} {when(sleep.wake_at)}")


def _attempt_cells(a: AttemptRecord) -> list[RenderableType]:
    retry = ""
    if a.next_at is not None and a.finished_at is not None:
        retry = f" (retry after {duration(a.finished_at, a.next_at)})"
    return ["", "", Text(f"  attempt {a.attempt}"), "", status_text("retried"), "",
            duration(a.started_at, a.finished_at), Text.assemble(error_text(a.error), retry)]


def _summary(st: RunStatus) -> RenderableType:
    lines = Text()
    lines.append("status ")
    lines.append_text(status_text(st.status))
    if st.cancel_requested and not st.done:
        lines.append("  cancel requested", style="yellow")
    waiting = _waiting(st)
    if waiting and not st.done:
        lines.append(f"  waiting on {waiting}")
    if st.unserved:
        lines.append(f"\nno live worker serves workflow {st.workflow!r}: this run stays {st.status} until a worker "
                     "that registers it starts", style="yellow")
    if st.status == RunState.DEAD_LETTERED:
        lines.append(f"\ndead-lettered: its compensations were not run; `chainflow retry {st.id}` puts it back "
                     "to pending", style="red")
    if st.output is not None:
        lines.append("\noutput ")
        lines.append(short(st.output, _SUMMARY_LIMIT))
    if st.error:
        lines.append("\nerror ", style="red")
        lines.append_text(error_text(st.error, _SUMMARY_LIMIT))
    if st.rollback:
        entry, reason = st.rollback.get("entry_id"), st.rollback.get("reason") or "no reason recorded"
        if st.done:
            lines.append(f"\nreorg after the run ended: {reason} (journal entry {entry}); not reopened, "
                         "its compensations had already run", style="yellow")
        else:
            lines.append(f"\nrolling back to journal entry {entry}: {reason}", style="yellow")
    if st.compensations:
        failed = [k for k, v in st.compensations.items() if v != EntryState.OK]
        lines.append(f"\ncompensations: {len(st.compensations)} ran, {len(failed)} failed  ",
                     style="red" if failed else "magenta")
        lines.append_text(Text(", ").join(
            Text.assemble(f"{label} ", status_text(outcome)) for label, outcome in st.compensations.items()
        ))
    return lines


def _waiting(st: RunStatus) -> str:
    if st.waiting_on:
        return "signal " + ", ".join(st.waiting_on)
    if st.status == RunState.SLEEPING and st.wake_at is not None:
        return f"timer until {when(st.wake_at)}"
    return ""


def status_text(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def error_text(error: dict[str, Any] | None, limit: int = _OUTPUT_LIMIT) -> Text:
    """``Type: message`` on one line; the traceback stays in the database."""
    if not error:
        return Text("")
    kind = str(error.get("type", "Error")).removeprefix("builtins.")
    message = " ".join(str(error.get("message", "")).split())
    return Text(_fit(f"{kind}: {message}" if message else kind, limit), style="red")


def short(value: Any, limit: int = _OUTPUT_LIMIT) -> str:
    """A decoded value on one line: plain JSON (``codec.readable``), not the stored
    tagged form, so a wei amount reads as its digits and bytes as 0x-hex."""
    text = value if isinstance(value, str) else json.dumps(codec.readable(value), separators=(",", ":"))
    return _fit(" ".join(text.split()), limit)


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` on a terminal, where a table must fit the screen; whole
    when piped or redirected, where grep and log files want every digit of an amount."""
    return _clip(text, limit) if console.is_terminal else text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_json(text: str, option: str) -> Any:
    try:
        return codec.parse_json(text, what=option)  # too deep / too long: PayloadError, one line
    except json.JSONDecodeError as exc:
        fail(f"{option} is not valid JSON ({exc}): {_clip(text, 60)!r}")


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'"""
    spans: list[list[int]] = []
    for v in sorted(set(values)):
        if spans and spans[-1][1] == v - 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


PLUGIN_GROUP = "chainflow.commands"


def load_plugins() -> None:
    """Attach the subcommands installed packages declare under the ``chainflow.commands``
    entry point (``devnet`` comes from this project's own devnet package).  A plugin
    that fails to import costs its command and one line on stderr, never the CLI."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name in cli.commands:
            continue
        try:
            command = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of someone else's code
            click.echo(f"warning: `chainflow {ep.name}` unavailable ({ep.value}): {type(exc).__name__}: {exc}",
                       err=True)
            continue
        if isinstance(command, click.Command):
            cli.add_command(command, ep.name)


def main() -> None:
    load_plugins()
    cli(prog_name="chainflow")
