"""Devnet fixtures: every backend-agnostic test runs on the in-process EVM *and* anvil.

When the anvil binary is missing the anvil half is skipped with a hint,
except under CI=true where it fails: CI must never go green by silently
testing only one devnet.
"""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3

from devnet.base import Devnet
from tests.conftest import require_anvil


@pytest.fixture
def anvil_installed() -> None:
    """Skip (locally) or fail (CI=true) when scripts/install-anvil.sh has not been run."""
    require_anvil()


@pytest.fixture
def devnet(net: Any) -> Any:
    """A started devnet of each kind (the shared ``net`` fixture under this suite's name)."""
    return net


@pytest.fixture
def w3(devnet: Devnet) -> Web3:
    return Web3(Web3.HTTPProvider(devnet.rpc_url, request_kwargs={"timeout": 10}))
