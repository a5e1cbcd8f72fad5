"""Reorg tests: every chain-facing test runs on the in-process EVM *and* real anvil,
and (through ``db_url`` from tests/conftest.py) on SQLite *and* Postgres.

When the anvil binary is missing the anvil half is skipped with the install hint,
except under CI=true where it fails: CI must never go green by testing one node only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devnet import Anvil, AnvilNotInstalled, InProcessEVM, anvil_binary
from devnet.base import Devnet

from ..conftest import CallLog, in_ci
from ._rig import Rig, build_rig


def require_anvil() -> None:
    try:
        anvil_binary()
    except AnvilNotInstalled as exc:
        if in_ci():
            pytest.fail(f"{exc}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(params=[pytest.param("inprocess"), pytest.param("anvil", marks=pytest.mark.anvil)])
def node_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "anvil":
        require_anvil()
    return str(request.param)


@pytest.fixture
def make_net(node_kind: str) -> Iterator[Callable[..., Any]]:
    """Factory for a started devnet of this test's kind, stopped at teardown."""
    started: list[Devnet] = []

    def make(**options: Any) -> Any:
        if node_kind == "anvil":
            options.pop("finality_depth", None)  # anvil's tags trail by fixed depths
        net: Devnet = Anvil(**options) if node_kind == "anvil" else InProcessEVM(**options)
        net.__enter__()
        started.append(net)
        return net

    yield make
    for net in started:
        net.stop()


@pytest.fixture
def net(make_net: Callable[..., Any]) -> Any:
    return make_net()


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
