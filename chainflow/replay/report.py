"""What a replay found, per step and per run, as data: the CLI renders it as a table or
JSON, tests and the pytest helper assert on it, a CI job gates on ``changed``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..storage import codec
from .diff import Difference


class Change(StrEnum):
    """How one operation of the replay compares with history."""

    UNCHANGED = "unchanged"
    OUTPUT_CHANGED = "output_changed"  # same step, another output (``diff`` says where)
    ERROR_CHANGED = "error_changed"  # an error appeared, disappeared or is another one
    TX_CHANGED = "tx_changed"  # a submit built another transaction (both in ``tx``)
    NEW = "new"  # history holds nothing for it: new code asked for more
    MISSING = "missing"  # history holds it, the new code never asked for it
    DIVERGENCE = "divergence"  # another operation than history holds at this position
    WOULD_RUN = "would_run"  # new effectful code not run (``--allow-effects`` runs it)
    NOT_REACHED = "not_reached"  # recorded, but the replay stopped before it (a would-run)


@dataclass(frozen=True)
class TxComparison:
    """A submit whose new transaction differs from the recorded one, both decoded.

    ``simulation`` is the node's answer for the new transaction at the recorded block
    (a ``chain.adapter.Simulation`` as a dict), or None with ``not_simulated`` saying
    why: never a guess."""

    chain: str
    recorded: dict[str, Any] | None
    replayed: dict[str, Any]
    recorded_key: str | None
    replayed_key: str
    simulation: dict[str, Any] | None = None
    not_simulated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "recorded": codec.plain(self.recorded), "replayed": codec.plain(self.replayed),
                "recorded_key": self.recorded_key, "replayed_key": self.replayed_key,
                "simulated": self.simulation is not None, "simulation": self.simulation,
                "not_simulated": self.not_simulated}


@dataclass(frozen=True)
class StepReport:
    label: str  # "branch/key" or "key"
    op: str  # the journal kind: step, submit, sleep, wait, now, uuid, random, compensation
    change: Change
    detail: str = ""
    diff: list[Difference] = field(default_factory=list)
    tx: TxComparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.label, "op": self.op, "change": self.change.value, "detail": self.detail,
                "diff": [d.to_dict() for d in self.diff], "tx": None if self.tx is None else self.tx.to_dict()}


@dataclass(frozen=True)
class RunReport:
    run_id: str
    workflow: str
    recorded_status: str
    replayed_status: str  # completed, failed, or where the replay stopped: waiting, halted
    steps: list[StepReport]
    output_diff: list[Difference]  # the workflow's result, recorded against replayed
    error_changed: str | None = None  # recorded and replayed run errors, when they differ
    divergence: str | None = None  # the first point where new code asked for another operation
    invalidated: list[dict[str, Any]] = field(default_factory=list)  # reorg-invalidated entries, as recorded

    @property
    def changed(self) -> bool:
        """Anything the new code does differently: what a CI gate fails on."""
        return (any(s.change != Change.UNCHANGED for s in self.steps) or bool(self.output_diff)
                or self.error_changed is not None or self.recorded_status != self.replayed_status)

    def counts(self) -> Counter[Change]:
        return Counter(s.change for s in self.steps)

    def step(self, label: str) -> StepReport:
        """The report of one operation by label (a test's first question)."""
        for s in self.steps:
            if s.label == label:
                return s
        raise KeyError(f"no operation {label!r} in the replay of run {self.run_id} "
                       f"(operations: {', '.join(s.label for s in self.steps)})")

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "workflow": self.workflow, "changed": self.changed,
                "recorded_status": self.recorded_status, "replayed_status": self.replayed_status,
                "divergence": self.divergence, "error_changed": self.error_changed,
                "output_diff": [d.to_dict() for d in self.output_diff],
                "steps": [s.to_dict() for s in self.steps], "invalidated": self.invalidated}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


@dataclass
class SweepReport:
    """Many runs replayed: their reports, and runs that could not be replayed at all."""

    reports: list[RunReport] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # run id -> why it could not be replayed

    @property
    def changed(self) -> bool:
        return bool(self.failures) or any(r.changed for r in self.reports)

    def by_change(self) -> dict[str, list[str]]:
        """Kind of change -> ids of the runs showing it (a run counts once per kind);
        ``output`` and ``status`` for the run's own result."""
        groups: dict[str, list[str]] = {}
        for r in self.reports:
            kinds = {s.change.value for s in r.steps if s.change != Change.UNCHANGED}
            if r.output_diff or r.error_changed:
                kinds.add("run_result_changed")
            if r.recorded_status != r.replayed_status:
                kinds.add("run_status_changed")
            for kind in sorted(kinds):
                groups.setdefault(kind, []).append(r.run_id)
        return groups

    def to_dict(self) -> dict[str, Any]:
        return {"runs": len(self.reports) + len(self.failures), "changed": self.changed,
                "changed_runs": sum(r.changed for r in self.reports),
                "by_change": self.by_change(), "failures": self.failures,
                "reports": [r.to_dict() for r in self.reports if r.changed]}
