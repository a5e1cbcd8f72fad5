"""The client half of time travel: ``Chainflow.replay``, ``replay_sweep``, ``export``,
``fork`` and ``fork_many`` (the app's methods hand straight to these).

Replay reads histories in read-only transactions and never writes; a fork writes one
new run with its copied journal in one transaction, and nothing else.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..chain.adapter import ChainAdapter
from ..clock import Clock, to_epoch
from ..errors import ConfigurationError, RunNotFoundError
from ..replay import fork as forking
from ..replay import history
from ..replay.history import History
from ..replay.replayer import Override, ReplayOptions, replay
from ..replay.report import RunReport, SweepReport
from ..runtime.overrides import Overrides, resolve, spec_of
from ..runtime.registry import Registry, WorkflowDef, infer_input_type, input_hash
from ..states import RunState, run_state
from ..storage import limits, store
from ..storage.database import Database
from ..threads import offload



class Chainflow(Protocol):
    """What time travel uses of the app (``client.app.Chainflow`` provides it)."""

    database: Database
    registry: Registry
    chains: dict[str, ChainAdapter]
    clock: Clock

StepCode = Callable[..., Any] | Override | str
WorkflowCode = Callable[..., Any] | str | None
Progress = Callable[[int, int], None]  # (done, total)
_BATCH = 1000  # histories read per transaction in a sweep


def step_overrides(overrides: Mapping[str, StepCode] | None) -> dict[str, Override]:
    """Overrides as replay takes them: a function, an ``Override`` or "module:function"."""
    out: dict[str, Override] = {}
    for name, code in (overrides or {}).items():
        if isinstance(code, Override):
            out[name] = code
        elif isinstance(code, str):
            out[name] = Override(resolve(code, f"override of step {name!r}"))
        elif callable(code):
            out[name] = Override(code)
        else:
            raise ConfigurationError(f"override of step {name!r} must be a function, an Override or "
                                     f"'module:function', got {code!r}")
    return out


def _workflow_of(app: Chainflow, name: str, code: WorkflowCode) -> WorkflowDef:
    if code is None:
        return app.registry.get(name)
    fn = resolve(code, "workflow override") if isinstance(code, str) else code
    registered = app.registry.get(name) if name in app.registry else None
    declared = infer_input_type(fn) or (registered.input_type if registered is not None else None)
    return WorkflowDef(name, fn, registered.timeout if registered is not None else None, declared)


def _options(app: Chainflow, overrides: Mapping[str, StepCode] | None, pure: Iterable[str],
             allow_effects: bool) -> ReplayOptions:
    return ReplayOptions(step_overrides(overrides), frozenset(pure), allow_effects, dict(app.chains))


def load(app: Chainflow, run_id: str) -> History:
    found = app.database.read(history.load, [run_id])
    if run_id not in found:
        raise RunNotFoundError(run_id)
    return found[run_id]


async def replay_one(app: Chainflow, run: str | History, *, overrides: Mapping[str, StepCode] | None = None,
                     workflow: WorkflowCode = None, pure: Iterable[str] = (),
                     allow_effects: bool = False) -> RunReport:
    recorded = run if isinstance(run, History) else await offload(load, app, run)
    return await replay(recorded, _workflow_of(app, recorded.run.workflow, workflow),
                        _options(app, overrides, pure, allow_effects))


def select(app: Chainflow, method: str, *, workflow_name: str | None, status: RunState | str | None,
           since: float | dt.datetime | dt.timedelta | None, sample: int | None = None,
           forks: bool = True) -> list[str]:
    """Ids of the runs a sweep or a bulk fork (``method``, which errors name) covers,
    oldest first; the filters are checked before the query."""
    if workflow_name is not None:
        limits.lookup(workflow_name, f"{method}: workflow_name")
    state = None if status is None else run_state(status, f"{method}: status").value
    start = None if since is None else to_epoch(since, f"{method}: since", now=app.clock.time())
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ValueError(f"{method}: sample must be a positive int, got {sample!r}")
    ids = app.database.read(lambda conn: store.select_runs(
        conn, workflow=workflow_name, status=state, since=start, forks=forks))
    if sample is not None and sample < len(ids):
        chosen = set(random.sample(ids, sample))
        ids = [i for i in ids if i in chosen]
    return ids


async def sweep(app: Chainflow, run_ids: list[str], *, overrides: Mapping[str, StepCode] | None = None,
                workflow: WorkflowCode = None, pure: Iterable[str] = (), allow_effects: bool = False,
                progress: Progress | None = None) -> SweepReport:
    """Replay every run of ``run_ids``; a run that cannot be replayed at all (its
    workflow is not registered, its input no longer decodes) is a failure of the
    sweep, not a reason to stop it."""
    options = _options(app, overrides, pure, allow_effects)
    workflows: dict[str, WorkflowDef] = {}
    result = SweepReport()
    done = 0
    for start in range(0, len(run_ids), _BATCH):
        batch = run_ids[start:start + _BATCH]
        found = await offload(app.database.read, history.load, batch)
        for run_id in batch:
            recorded = found.get(run_id)
            try:
                if recorded is None:
                    raise RunNotFoundError(run_id)
                name = recorded.run.workflow
                if name not in workflows:
                    workflows[name] = _workflow_of(app, name, workflow)
                result.reports.append(await replay(recorded, workflows[name], options))
            except Exception as exc:  # noqa: BLE001 - one run's trouble is reported, the sweep goes on
                result.failures[run_id] = f"{type(exc).__name__}: {exc}"
            done += 1
            if progress is not None:
                progress(done, len(run_ids))
    return result


def export(app: Chainflow, run_id: str) -> str:
    return load(app, run_id).to_json()


@dataclass
class ForkSummary:
    """A bulk fork: source run -> its new fork; sources skipped and why."""

    created: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def fork_overrides(overrides: Mapping[str, Callable[..., Any] | str] | None, workflow: WorkflowCode) -> Overrides:
    """Overrides as a fork stores them: import paths, each checked to import now (the
    worker that executes the fork imports them again)."""
    steps = {}
    for name, code in (overrides or {}).items():
        if isinstance(code, Override):
            raise ConfigurationError(f"override of step {name!r}: a fork runs live, so every step is effectful; "
                                     "pass the function or 'module:function'")
        steps[name] = _import_path(code, f"override of step {name!r}")
    return Overrides(None if workflow is None else _import_path(workflow, "workflow override"), steps)


def _import_path(code: Callable[..., Any] | str, what: str) -> str:
    if isinstance(code, str):
        resolve(code, what)  # checked now, before anything is written; the worker imports it again
        return code
    return spec_of(code, what)


def _fork_row(app: Chainflow, recorded: History, point: forking.ForkPoint, swap: Overrides
              ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    entry = forking.fork_entry(recorded, point)
    entries, tries = forking.copied(recorded, entry)
    run, now = recorded.run, app.clock.time()
    timeout = app.registry.get(run.workflow).timeout if run.workflow in app.registry else None
    row = store.run_row(workflow=run.workflow, input_text=run.input,
                        input_hash=input_hash(run.workflow, run.input),
                        idempotency_key=None, deadline=None if timeout is None else now + timeout, now=now)
    row.update(parent_id=run.id, overrides=swap.to_json() if swap else None)
    return row, entries, tries


_RETRIED = "run {run_id} was put back to pending since its history was read: fork it once it has finished"


def fork_one(app: Chainflow, run_id: str, point: forking.ForkPoint,
             overrides: Mapping[str, Callable[..., Any] | str] | None, workflow: WorkflowCode) -> tuple[str, str]:
    """The new run's id and workflow."""
    swap = fork_overrides(overrides, workflow)
    row, entries, tries = _fork_row(app, load(app, run_id), point, swap)
    if not app.database.tx(store.insert_fork, row, entries, tries):
        raise forking.ForkError(_RETRIED.format(run_id=run_id))
    return str(row["id"]), str(row["workflow"])


def fork_many(app: Chainflow, run_ids: list[str], point: forking.ForkPoint,
              overrides: Mapping[str, Callable[..., Any] | str] | None, workflow: WorkflowCode,
              progress: Progress | None = None) -> ForkSummary:
    """Fork each run once: a source some fork was already made from is skipped, so an
    interrupted bulk fork is resumed by running it again (its selection leaves forks
    out: ``select(forks=False)``)."""
    swap = fork_overrides(overrides, workflow)
    summary = ForkSummary()
    done = 0
    for start in range(0, len(run_ids), _BATCH):
        batch = run_ids[start:start + _BATCH]

        def fork_batch(conn: Any, batch: list[str] = batch) -> None:
            already = store.forked(conn, batch)
            found = history.load(conn, [r for r in batch if r not in already])
            for run_id in batch:
                if run_id in already:
                    summary.skipped[run_id] = "already forked"
                    continue
                try:
                    row, entries, tries = _fork_row(app, found[run_id], point, swap)
                except forking.ForkError as exc:
                    summary.skipped[run_id] = str(exc)
                    continue
                if store.insert_fork(conn, row, entries, tries):
                    summary.created[run_id] = row["id"]
                else:
                    summary.skipped[run_id] = _RETRIED.format(run_id=run_id)

        app.database.tx(fork_batch)
        done += len(batch)
        if progress is not None:
            progress(done, len(run_ids))
    return summary


