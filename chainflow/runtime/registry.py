"""Registered workflows and their declared input types.

Validation happens in ``start`` before anything is written, so a bad request leaves no
half-created run behind; the stored input is the validated, plain-data form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dacite

from ..errors import DuplicateWorkflowError, InputValidationError, UnknownWorkflowError
from ..storage import codec

WorkflowFn = Callable[[Any, Any], Awaitable[Any]]

# How a worker turns a stored dataclass input (``dataclasses.asdict`` of it) back into the
# declared class: every dataclass nested in it is rebuilt from the type hints, which
# ``tp(**data)`` left as dicts.  An unknown key is refused as the constructor refused it.
# Types are not checked again: ``start`` did, and a run it accepted before it checked
# them resumes with the input it started with.
_REBUILD = dacite.Config(check_types=False, strict=True)


def _not_a_bool(tp: type) -> Callable[[Any], Any]:
    """``isinstance(True, int)`` holds, but True is no amount: refused as pydantic's strict
    mode refuses it (dacite names the field)."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise dacite.WrongTypeError(field_type=tp, value=value)
        return value

    return check


# How ``start`` checks a dataclass input: each field, nested ones too, is of its declared
# type, nothing coerced (1.0 is no int: a float amount has lost wei past 2**53, and "5" is
# a caller's bug), and no key is unknown.
_VALIDATE = dacite.Config(strict=True, type_hooks={int: _not_a_bool(int), float: _not_a_bool(float)})


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_validate") and hasattr(tp, "model_dump")


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    fn: WorkflowFn
    timeout: float | None
    input_type: type | None

    def validate_input(self, value: Any) -> Any:
        """Plain data to store, or InputValidationError naming the workflow and field."""
        tp = self.input_type
        if tp is None:
            return value
        try:
            if _is_pydantic(tp):
                model: Any = value if isinstance(value, tp) else tp.model_validate(value)  # type: ignore[attr-defined]
                return model.model_dump(mode="python")
            if dataclasses.is_dataclass(tp):
                # an instance is checked too: a dataclass's constructor checks no type
                data = dataclasses.asdict(value) if isinstance(value, tp) else value
                if not isinstance(data, Mapping):
                    raise TypeError(f"expected a {tp.__name__} or a mapping of its fields, got {type(value).__name__}")
                return dataclasses.asdict(dacite.from_dict(tp, data, _VALIDATE))
        except (TypeError, ValueError, dacite.DaciteError) as exc:
            raise InputValidationError(self.name, str(exc).strip()) from None
        return value

    def new_run(self, input: Any, idempotency_key: str | None, now: float) -> dict[str, Any]:
        """Validate and encode a start request (a client's, a parent's ``ctx.child``, a
        schedule's fire): the fields of ``storage.store.run_row``."""
        text = codec.dumps(self.validate_input(input), what=f"input of workflow {self.name!r}")
        return dict(workflow=self.name, input_text=text, input_hash=input_hash(self.name, text),
                    idempotency_key=idempotency_key, deadline=None if self.timeout is None else now + self.timeout,
                    now=now)

    def decode_input(self, data: Any) -> Any:
        tp = self.input_type
        if tp is None:
            return data
        if _is_pydantic(tp):
            return tp.model_validate(data)  # type: ignore[attr-defined]
        return dacite.from_dict(tp, data, _REBUILD)


def _digest(workflow: str, text: str) -> str:
    return hashlib.sha256(f"{workflow}\0{text}".encode()).hexdigest()


def input_hash(workflow: str, text: str) -> str:
    """What an idempotent start compares with the run its key names: equal for equal
    inputs, whatever order their dicts' keys came in."""
    return _digest(workflow, codec.canonical(text))


def same_input(stored_hash: str, fields: dict[str, Any]) -> bool:
    """Whether a run's stored input hash is that of the start request ``fields``
    (``WorkflowDef.new_run``'s): its canonical hash, or the hash of its text as written,
    which runs started before the hash was canonical stored."""
    return stored_hash in (fields["input_hash"], _digest(fields["workflow"], fields["input_text"]))


def infer_input_type(fn: WorkflowFn) -> type | None:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise TypeError(f"workflow function {fn.__qualname__} must take (ctx, input)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: no declared type
        return None
    tp = hints.get(params[1].name)
    if isinstance(tp, type) and (_is_pydantic(tp) or dataclasses.is_dataclass(tp)):
        return tp
    return None


class Registry:
    def __init__(self) -> None:
        self._defs: dict[str, WorkflowDef] = {}

    def add(self, wf: WorkflowDef) -> None:
        if wf.name in self._defs:
            raise DuplicateWorkflowError(wf.name)
        if not inspect.iscoroutinefunction(wf.fn):
            raise TypeError(f"workflow {wf.name!r} must be an async function")
        self._defs[wf.name] = wf

    def get(self, name: str) -> WorkflowDef:
        try:
            return self._defs[name]
        except KeyError:
            raise UnknownWorkflowError(name) from None

    def name_of(self, fn: Callable[..., Any]) -> str | None:
        """The name ``fn`` is registered under, if it is."""
        return next((wf.name for wf in self._defs.values() if wf.fn is fn), None)

    def __contains__(self, name: str) -> bool:
        return name in self._defs

    def names(self) -> list[str]:
        return sorted(self._defs)
