"""``chainflow`` command line: run workers and inspect, signal and cancel runs.

Every expected failure (unknown run, finished run, bad URL, bad APP path, bad JSON)
prints one ``error: …`` line and exits 1: operators read these in a terminal or a CI
log, where a traceback hides the one sentence that matters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import codec
from .app import Chainflow
from .errors import ChainflowError

F = TypeVar("F", bound=Callable[..., Any])
console = Console()


class CliError(click.ClickException):
    """One line on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def load_app(spec: str) -> Chainflow:
    """Import ``module:attribute`` (like uvicorn), with the current directory importable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"APP must look like module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code
        raise CliError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, Chainflow):
        raise CliError(f"{spec!r} is not a chainflow.Chainflow app (found {type(app).__name__})")
    return app


def _handle_errors(fn: F) -> F:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ChainflowError as exc:
            raise CliError(str(exc)) from None
        except ValueError as exc:  # bad key material, bad JSON, bad options
            raise CliError(str(exc)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("--app", "app_spec", envvar="CHAINFLOW_APP", help="module:attribute of your Chainflow app.")
@click.option("--database-url", envvar="CHAINFLOW_DATABASE_URL", help="Database URL (without --app).")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, database_url: str | None) -> None:
    """Durable, blockchain-aware payment workflows."""

    def get() -> Chainflow:
        try:
            return load_app(app_spec) if app_spec else Chainflow(database_url)
        except ChainflowError as exc:
            raise CliError(str(exc)) from None

    ctx.obj = get


def _app(ctx: click.Context) -> Chainflow:
    return ctx.obj()  # type: ignore[no-any-return]


@cli.command()
@click.argument("app_spec", metavar="APP")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lease", type=float, help="Lease seconds (default: the app's).")
def worker(app_spec: str, concurrency: int, lease: float | None) -> None:
    """Run a worker for APP (module:attribute) until SIGINT/SIGTERM."""
    app = load_app(app_spec)
    options = {} if lease is None else {"lease": lease}
    try:
        app.ensure_schema()
        console.print(f"chainflow worker: {len(app.registry.names())} workflow(s), concurrency {concurrency}",
                      highlight=False)
        app.run_worker(concurrency=concurrency, **options)
    except ChainflowError as exc:
        raise CliError(str(exc)) from None


@cli.command()
@click.argument("workflow")
@click.option("--input", "input_json", default="null", help="Input as JSON.")
@click.option("--key", "idempotency_key", help="Idempotency key.")
@click.pass_context
@_handle_errors
def start(ctx: click.Context, workflow: str, input_json: str, idempotency_key: str | None) -> None:
    """Start WORKFLOW (needs --app, so the input can be validated)."""
    handle = _app(ctx).start(workflow, _json(input_json, "--input"), idempotency_key=idempotency_key)
    click.echo(handle.id if handle.created else f"{handle.id} (existing run for this key)")


@cli.command()
@click.option("--status", help="Only runs in this status.")
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.pass_context
@_handle_errors
def runs(ctx: click.Context, status: str | None, workflow: str | None, limit: int) -> None:
    """List runs, newest first."""
    table = Table("id", "workflow", "status", "created", "updated", "waiting on")
    for r in _app(ctx).runs(status=status, workflow=workflow, limit=limit):
        table.add_row(r.id, r.workflow, _status_text(r.status), _when(r.created_at), _when(r.updated_at),
                      ", ".join(r.waiting_on))
    console.print(table)


@cli.command()
@click.argument("run_id")
@click.pass_context
@_handle_errors
def show(ctx: click.Context, run_id: str) -> None:
    """A run's timeline: steps, attempts, durations, outputs or errors, compensations."""
    app = _app(ctx)
    st = app.status(run_id)
    failures: dict[tuple[str, str], list[Any]] = {}
    for a in app.attempts(run_id):
        failures.setdefault((a.branch, a.key), []).append(a)
    table = Table("#", "branch", "step", "kind", "status", "attempts", "duration", "output / error")
    for i, e in enumerate(app.journal(run_id), 1):
        duration = "" if e.started_at is None or e.finished_at is None else f"{e.finished_at - e.started_at:.3f}s"
        detail = (e.error or {}).get("message", "") if e.error else _short(e.output)
        if e.invalidated:
            detail = f"{detail}  [invalidated: {e.reason}]"
        style = "strike dim" if e.invalidated else ("magenta" if e.kind == "compensation" else "")
        table.add_row(str(i), e.branch or "-", e.key, e.kind, _status_text(e.status), str(e.attempts), duration,
                      detail, style=style)
        for a in failures.get((e.branch, e.key), []):
            table.add_row("", "", f"  attempt {a.attempt}", "", Text("error", style="red"), "", "",
                          (a.error or {}).get("message", ""), style="dim")
    console.print(f"run {st.id}  workflow {st.workflow}  status ", _status_text(st.status), highlight=False)
    console.print(table)
    if st.output is not None:
        console.print(f"output: {_short(st.output, 500)}", highlight=False)
    if st.error:
        console.print(f"error: {st.error.get('type')}: {st.error.get('message')}", style="red", highlight=False)
    if st.compensations:
        console.print("compensations: " + ", ".join(f"{k}={v}" for k, v in st.compensations.items()))


@cli.command()
@click.argument("run_id")
@click.argument("name")
@click.option("--payload", default="null", help="Signal payload as JSON.")
@click.pass_context
@_handle_errors
def signal(ctx: click.Context, run_id: str, name: str, payload: str) -> None:
    """Send signal NAME to RUN_ID."""
    _app(ctx).signal(run_id, name, _json(payload, "--payload"))
    click.echo(f"signal {name!r} sent to {run_id}")


@cli.command()
@click.argument("run_id")
@click.pass_context
@_handle_errors
def cancel(ctx: click.Context, run_id: str) -> None:
    """Cancel RUN_ID; its compensations run."""
    _app(ctx).cancel(run_id)
    click.echo(f"cancel requested for {run_id}")


@cli.command()
@click.pass_context
@_handle_errors
def nonces(ctx: click.Context) -> None:
    """Nonce health per (chain, sender): next nonce, the chain's counts, in flight, gaps."""
    from .nonces import report, snapshot

    app = _app(ctx)
    rows = asyncio.run(report(app)) if app.chains else app._read(snapshot)
    table = Table("chain", "sender", "next", "chain latest", "chain pending", "in flight", "gaps", "gap fills")
    for r in rows:
        table.add_row(r.chain, r.sender, str(r.next_nonce), _opt(r.chain_latest), _opt(r.chain_pending),
                      _ranges(r.in_flight), Text(_ranges(r.gaps), style="red" if r.gaps else ""),
                      ", ".join(f"{n}:{s}" for n, s in r.gap_fills))
    console.print(table)


@cli.command()
def metrics() -> None:
    """This process's counters in Prometheus text format."""
    from .metrics import exposition

    click.echo(exposition(), nl=False)


def _json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{option} is not valid JSON: {exc}") from None


def _status_text(status: str) -> Text:
    colour = {"completed": "green", "ok": "green", "failed": "red", "error": "red", "cancelled": "yellow",
              "invalidated": "dim"}.get(status, "cyan")
    return Text(status, style=colour)


def _when(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, limit: int = 80) -> str:
    text = codec.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def _ranges(values: list[int]) -> str:
    """[1,2,3,7] -> '1-3, 7'"""
    out: list[str] = []
    for v in sorted(values):
        if out and "-" not in out[-1].split(", ")[-1] and int(out[-1]) == v - 1:
            out[-1] = f"{out[-1]}-{v}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def main() -> None:
    cli(prog_name="chainflow")
