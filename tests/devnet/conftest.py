"""Devnet fixtures: every backend-agnostic test runs on the in-process EVM *and* anvil.

When the anvil binary is missing the anvil half is skipped with a hint,
except under CI=true where it fails: CI must never go green by silently
testing only one devnet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_anvil
from web3 import Web3

from devnet import Anvil, InProcessEVM
from devnet.base import Devnet

MakeDevnet = Callable[..., Any]


@pytest.fixture
def anvil_installed() -> None:
    """Skip (locally) or fail (CI=true) when scripts/install-anvil.sh has not been run."""
    require_anvil()


@pytest.fixture(params=[pytest.param("inprocess"), pytest.param("anvil", marks=pytest.mark.anvil)])
def devnet_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "anvil":
        require_anvil()
    return str(request.param)


@pytest.fixture
def make_devnet(devnet_kind: str) -> Iterator[MakeDevnet]:
    """Factory for a started devnet of this test's kind, stopped at teardown."""
    started: list[Devnet] = []

    def make(**options: Any) -> Any:
        net: Devnet = Anvil(**options) if devnet_kind == "anvil" else InProcessEVM(**options)
        net.__enter__()
        started.append(net)
        return net

    yield make
    for net in started:
        net.stop()


@pytest.fixture
def devnet(make_devnet: MakeDevnet) -> Any:
    return make_devnet()


@pytest.fixture
def w3(devnet: Devnet) -> Web3:
    return Web3(Web3.HTTPProvider(devnet.rpc_url, request_kwargs={"timeout": 10}))
