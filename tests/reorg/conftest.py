"""Reorg tests: every chain-facing test runs on the in-process EVM *and* real anvil,
and (through ``db_url`` from tests/conftest.py) on SQLite *and* Postgres.

When the anvil binary is missing the anvil half is skipped with the install hint,
except under CI=true where it fails: CI must never go green by testing one node only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import CallLog
from ._rig import Rig, build_rig


@pytest.fixture
def ledger(tmp_path: Path) -> CallLog:
    """Side effects of steps and compensations, one line each, in execution order."""
    return CallLog(tmp_path / "ledger.log")


@pytest.fixture
async def rig(net: Any, db_url: str, ledger: CallLog) -> AsyncIterator[Rig]:
    r = build_rig(net, db_url, ledger)
    try:
        yield r
    finally:
        await r.close()
