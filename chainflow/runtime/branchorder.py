"""When each branch of a run opened, relative to the ends of its sibling branches, and
which ended by themselves.

A reorg rollback undoes what may have used the broken step's result.  Branch paths
tell most of it (later steps of the step's branch, and of the branches it joined), but
not a branch opened *after* the broken step's branch had ended: in two consecutive
``ctx.gather`` calls the second round's "0#1" and "1#1" are siblings of the first
round's "0" by name, yet either may have been handed its result.  Nor a branch that
awaited the broken step's branch task (``ctx.branch``): what it did from then on may
use that branch's result.  Branch openings and awaits are not journaled, so both are
observed as the workflow code replays, which the rollback's execution does before it
decides anything.

A branch whose code ended by itself before asking for operations its journal holds
was changed (``Scope.unasked``); one cancelled, or still running, tells nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..storage.limits import BRANCH_SEP


class BranchOrder:
    def __init__(self) -> None:
        self._ended: dict[str, int] = {}  # per parent path: how many of its branches have ended
        self._end_at: dict[str, int] = {}  # branch path -> its place among its parent's ended branches
        self._open_at: dict[str, int] = {}  # branch path -> how many of its siblings had ended when it opened
        # (awaiting branch, awaited branch path) -> the awaiting branch's next position
        # when it first had the result: a later await of the same gives it nothing new
        self._awaits: dict[tuple[str, str], int] = {}
        self._concluded: set[str] = set()  # branches whose code ended by itself: returned or raised

    def opened(self, parent: str, path: str, task: asyncio.Task[Any]) -> None:
        self._open_at[path] = self._ended.get(parent, 0)
        task.add_done_callback(lambda done: self._end(parent, path, done))

    def _end(self, parent: str, path: str, task: asyncio.Task[Any]) -> None:
        n = self._ended.get(parent, 0)
        self._end_at[path] = n
        self._ended[parent] = n + 1
        if not task.cancelled():
            self._concluded.add(path)

    def seen(self, path: str) -> bool:
        """Whether branch ``path`` was opened in this execution."""
        return path in self._open_at

    def concluded(self, path: str) -> bool:
        """Whether branch ``path``'s code ended by itself in this execution (a cancelled
        one was cut off wherever it was, perhaps still replaying)."""
        return path in self._concluded

    def ended_before(self, ended: str, opened: str) -> bool:
        """Whether branch ``ended`` had ended when its sibling ``opened`` was opened
        (False when either was not seen in this execution)."""
        end, start = self._end_at.get(ended), self._open_at.get(opened)
        return end is not None and start is not None and end < start

    def awaited(self, branch: str, position: int, path: str) -> None:
        """Branch ``branch`` has the result of branch ``path``, its own operations from
        ``position`` on coming after."""
        self._awaits.setdefault((branch, path), position)

    def fed(self, branch: str, position: int, target: str) -> bool:
        """Whether the operation at ``position`` of ``branch`` came after the branch had
        awaited one whose result may rest on branch ``target``: one holding it, or one
        that had awaited such a branch itself, however many hands it passed through."""
        holding, grew = {target}, True
        while grew:  # a branch that awaited a holder holds it too: its result came later
            grew = False
            for awaiter, path in self._awaits:
                if awaiter not in holding and any(_within(h, path) for h in holding):
                    holding.add(awaiter)
                    grew = True
        return any(awaiter == branch and start <= position and any(_within(h, path) for h in holding)
                   for (awaiter, path), start in self._awaits.items())


def _within(branch: str, path: str) -> bool:
    """Whether ``branch`` is branch ``path`` or lies inside it."""
    return branch == path or branch.startswith(path + BRANCH_SEP)
