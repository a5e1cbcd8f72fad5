"""Deploy and drive the example ERC-20 (devnet/contracts/Token.vy) on any devnet.

Transactions are signed locally with the given key rather than relying on
node-side unlocked accounts, so the helpers behave the same on anvil, the
in-process EVM and a real testnet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import TxReceipt

from devnet.errors import DevnetError

TOKEN_ARTIFACT_PATH = Path(__file__).resolve().parent / "contracts" / "Token.json"
DEFAULT_MAX_MINT = 1_000_000_000 * 10**18


@dataclass(frozen=True, slots=True)
class TokenArtifact:
    abi: list[dict[str, Any]]
    bytecode: str


@lru_cache(maxsize=1)
def load_token_artifact() -> TokenArtifact:
    """The checked-in compiler output; rebuild with scripts/build-contracts.sh."""
    raw = json.loads(TOKEN_ARTIFACT_PATH.read_text(encoding="utf-8"))
    return TokenArtifact(abi=raw["abi"], bytecode=raw["bytecode"])


def token_contract(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_token_artifact().abi)


def deploy_token(
    w3: Web3,
    deployer_key: str,
    *,
    name: str = "Devnet Token",
    symbol: str = "DVT",
    decimals: int = 18,
    max_mint: int = DEFAULT_MAX_MINT,
    timeout: float = 30.0,
) -> str:
    """Deploy the token with the deployer as minter; returns the checksum address."""
    artifact = load_token_artifact()
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = _sign_and_send(w3, factory.constructor(name, symbol, decimals, max_mint), deployer_key, timeout)
    address = receipt["contractAddress"]
    if address is None:
        raise DevnetError("deployment receipt has no contractAddress")
    return str(address)


def transact(w3: Web3, call: ContractFunction, private_key: str, *, timeout: float = 30.0) -> TxReceipt:
    """Sign `call` with `private_key`, send it and wait; raise if it reverted on-chain."""
    return _sign_and_send(w3, call, private_key, timeout)


def _sign_and_send(w3: Web3, call: Any, private_key: str, timeout: float) -> TxReceipt:
    sender = Account.from_key(private_key).address
    tx = call.build_transaction(
        {"from": sender, "nonce": w3.eth.get_transaction_count(sender, "pending"), "chainId": w3.eth.chain_id}
    )
    signed = Account.sign_transaction(tx, private_key)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.05)
    if receipt["status"] != 1:
        raise DevnetError(f"transaction {tx_hash.to_0x_hex()} reverted on-chain")
    return receipt
