"""Adapter fixtures: each chain-facing test runs on the in-process EVM *and* real anvil.

When the anvil binary is missing the anvil half is skipped with the install hint, except
under CI=true where it fails: CI must never go green by testing one node only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from web3 import Web3
from web3.contract import Contract

from adapters.evm import EvmChain, LocalSigner
from devnet import (
    deploy_token,
    token_contract,
)

TOKEN_CAP = 1_000_000




@pytest.fixture
def w3(net: Any) -> Web3:
    return Web3(Web3.HTTPProvider(net.rpc_url, request_kwargs={"timeout": 10}))


@pytest.fixture
def token(net: Any, w3: Web3) -> Contract:
    """The devnet ERC-20, minter = account 0, cap TOKEN_CAP."""
    minter = net.accounts()[0]
    return token_contract(w3, deploy_token(w3, minter.private_key, max_mint=TOKEN_CAP))


@pytest.fixture
async def chain(net: Any) -> AsyncIterator[EvmChain]:
    """Adapter submitting from account 0 (the token's minter)."""
    adapter = EvmChain("devnet", net.rpc_url, LocalSigner.from_key(net.accounts()[0].private_key))
    yield adapter
    await adapter.aclose()


@pytest.fixture
async def outsider(net: Any) -> AsyncIterator[EvmChain]:
    """Adapter submitting from account 1 (funded, not the minter)."""
    adapter = EvmChain("devnet", net.rpc_url, LocalSigner.from_key(net.accounts()[1].private_key))
    yield adapter
    await adapter.aclose()
