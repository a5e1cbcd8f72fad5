"""Swapped code: a workflow function or a step's function replaced by ``module:attr``.

Replay runs a past run's history against other code, and a fork executes a run live
with it; both name the replacement as an import path, because a fork is executed by
whatever worker claims it, in another process, so only a name that imports the same
everywhere can travel with the run (``cf_runs.overrides``).  A callable handed in from
Python is turned into that name and checked to import back to the very same object.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError


def resolve(spec: str, what: str) -> Callable[..., Any]:
    """The callable ``module:attr`` names (``attr`` may be dotted), or a
    ``ConfigurationError`` naming ``what`` and the part at fault."""
    if not isinstance(spec, str):
        raise ConfigurationError(f"{what} must be 'module:function', got {spec!r}")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"{what} must look like 'module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure of user code
        raise ConfigurationError(f"{what}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigurationError(f"{what}: {spec!r} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def spec_of(fn: Callable[..., Any], what: str) -> str:
    """The ``module:attr`` import path of ``fn``, checked to import back to ``fn``: a
    lambda or a function defined inside another cannot be found by another process."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ConfigurationError(f"{what}: {fn!r} has no import path (a lambda or a nested function); "
                                 "define it at module level or pass 'module:function'")
    spec = f"{module}:{qualname}"
    if resolve(spec, what) is not fn:
        raise ConfigurationError(f"{what}: {spec!r} does not import back to {fn!r}")
    return spec


@dataclass(frozen=True)
class Overrides:
    """The code a run executes instead of its registered code: the workflow function
    and step functions by step name (what ``ctx.step(name, fn)`` calls)."""

    workflow: str | None = None
    steps: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.workflow is not None or bool(self.steps)

    def to_json(self) -> str:
        return json.dumps({"workflow": self.workflow, "steps": dict(sorted(self.steps.items()))})

    @staticmethod
    def from_json(text: str | None) -> Overrides:
        if not text:
            return Overrides()
        data = json.loads(text)
        return Overrides(data.get("workflow"), dict(data.get("steps") or {}))

    def step_functions(self) -> dict[str, Callable[..., Any]]:
        return {name: resolve(spec, f"override of step {name!r}") for name, spec in self.steps.items()}

    def workflow_function(self) -> Callable[..., Any] | None:
        return None if self.workflow is None else resolve(self.workflow, "workflow override")
