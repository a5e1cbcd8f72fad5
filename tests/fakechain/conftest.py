"""Fixtures shared by the fake-chain protocol tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from chainflow.testing import CallLog


@pytest.fixture
def ledger(tmp_path: Path) -> CallLog:
    """The workflow's side effects, one line each, in the order they happened."""
    return CallLog(tmp_path / "ledger.log")
