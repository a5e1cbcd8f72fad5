"""A process that becomes a worker (``run_worker``, so ``chainflow worker``) exempts
what it loaded from the collector's scans before the worker runs: found on the on-chain
benchmark, where full collections walking web3's and SQLAlchemy's objects took 1.1 s of
an 8 s run."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from chainflow.runtime.worker import Worker


def test_run_worker_freezes_what_is_loaded_before_the_worker_runs(make_app: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    async def run(self: Worker, stop: Any = None) -> None:
        seen.append(gc.get_freeze_count())

    monkeypatch.setattr(Worker, "run", run)
    gc.unfreeze()
    try:
        make_app().run_worker(concurrency=1)
        assert seen and seen[0] > 0
    finally:
        gc.unfreeze()  # the rest of the suite runs as before
