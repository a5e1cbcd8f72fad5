"""Throw-away devnets for tests and examples.

Two interchangeable EVM backends speak the same JSON-RPC (geth methods plus
anvil-style controls) and fund the same dev accounts:

* `Anvil`: the pinned anvil binary (scripts/install-anvil.sh), fast and complete.
* `InProcessEVM`: eth-tester/py-evm behind a loopback HTTP server, no binary needed.

For the Bitcoin family, `RegtestNode` runs bitcoind or Debian's litecoind
(scripts/install-regtest.sh) in regtest mode.
"""

from devnet.accounts import DEFAULT_MNEMONIC, DevAccount, derive_accounts
from devnet.anvil import ANVIL_VERSION, Anvil, anvil_binary
from devnet.base import Devnet
from devnet.errors import AnvilNotInstalled, DevnetError, RegtestNotInstalled, RpcError
from devnet.inprocess import InProcessEVM
from devnet.regtest import NodeBinary, RegtestNode, node_binary
from devnet.reorg import (
    ForkPoint,
    ReorgResult,
    mark_fork_point,
    reorg,
    reorg_to,
    rollback,
)
from devnet.token import deploy_token, load_token_artifact, token_contract, transact

__all__ = [
    "ANVIL_VERSION",
    "DEFAULT_MNEMONIC",
    "Anvil",
    "AnvilNotInstalled",
    "DevAccount",
    "Devnet",
    "DevnetError",
    "ForkPoint",
    "InProcessEVM",
    "NodeBinary",
    "RegtestNode",
    "RegtestNotInstalled",
    "ReorgResult",
    "RpcError",
    "anvil_binary",
    "deploy_token",
    "derive_accounts",
    "load_token_artifact",
    "mark_fork_point",
    "node_binary",
    "reorg",
    "reorg_to",
    "rollback",
    "token_contract",
    "transact",
]
