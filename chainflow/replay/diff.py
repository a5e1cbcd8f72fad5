"""Structured difference of two decoded values: what exactly changed, by path.

Values are compared as the journal holds them (decoded payloads), leaf by leaf through
dicts, lists and tuples; two leaves are the same only when their codec text is, so a
wei amount differing in its last digit, ``Decimal("1.0")`` against ``Decimal("1.00")``
or one changed byte is a difference, and ``1`` against ``True`` is one too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..storage import codec


class Edit(StrEnum):
    CHANGED = "changed"
    ADDED = "added"  # only the replayed value has it
    REMOVED = "removed"  # only the recorded value has it


@dataclass(frozen=True)
class Difference:
    path: str  # "" for the whole value, then ".field" and "[index]" steps
    edit: Edit
    recorded: Any = None
    replayed: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path or "$", "edit": self.edit.value, "recorded": codec.plain(self.recorded),
                "replayed": codec.plain(self.replayed)}


def diff(recorded: Any, replayed: Any, path: str = "") -> list[Difference]:
    if type(recorded) is not type(replayed):
        return [Difference(path, Edit.CHANGED, recorded, replayed)]
    if isinstance(recorded, dict):
        found: list[Difference] = []
        for key in recorded:
            step = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key!r}]"
            if key not in replayed:
                found.append(Difference(step, Edit.REMOVED, recorded[key], None))
            else:
                found.extend(diff(recorded[key], replayed[key], step))
        for key in replayed:
            if key not in recorded:
                step = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key!r}]"
                found.append(Difference(step, Edit.ADDED, None, replayed[key]))
        return found
    if isinstance(recorded, (list, tuple)):
        found = []
        for i in range(max(len(recorded), len(replayed))):
            step = f"{path}[{i}]"
            if i >= len(replayed):
                found.append(Difference(step, Edit.REMOVED, recorded[i], None))
            elif i >= len(recorded):
                found.append(Difference(step, Edit.ADDED, None, replayed[i]))
            else:
                found.extend(diff(recorded[i], replayed[i], step))
        return found
    if recorded is replayed or codec.dumps(recorded) == codec.dumps(replayed):
        return []
    return [Difference(path, Edit.CHANGED, recorded, replayed)]
