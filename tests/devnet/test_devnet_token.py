"""The example ERC-20 behaves identically (including revert reasons) on both devnets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError

from devnet import deploy_token, load_token_artifact, token_contract, transact
from devnet.token import TOKEN_ARTIFACT_PATH

pytestmark = pytest.mark.timeout(60)

CAP = 1_000


def test_artifact_is_compiled_for_a_portable_evm_version() -> None:
    raw = json.loads(TOKEN_ARTIFACT_PATH.read_text())
    assert raw["evmVersion"] == "shanghai"
    assert raw["bytecode"].startswith("0x") and len(raw["bytecode"]) > 100
    functions = {item["name"] for item in load_token_artifact().abi if item["type"] == "function"}
    assert {
        "mint",
        "burn",
        "max_mint",
        "transfer",
        "transferFrom",
        "approve",
        "balanceOf",
        "totalSupply",
    } <= functions
    events = {item["name"] for item in load_token_artifact().abi if item["type"] == "event"}
    assert {"Transfer", "Approval"} <= events


def test_deploy_mint_transfer_burn(devnet: Any, w3: Web3) -> None:
    minter, alice, bob = devnet.accounts()[:3]
    token = token_contract(w3, deploy_token(w3, minter.private_key, max_mint=CAP))
    assert token.functions.minter().call() == minter.address
    assert token.functions.max_mint().call() == CAP

    receipt = transact(w3, token.functions.mint(alice.address, 600), minter.private_key)
    (event,) = token.events.Transfer().process_receipt(receipt)
    assert event["args"]["receiver"] == alice.address and event["args"]["value"] == 600
    assert receipt["logs"][0]["logIndex"] == 0

    transact(w3, token.functions.transfer(bob.address, 100), alice.private_key)
    transact(w3, token.functions.approve(bob.address, 50), alice.private_key)
    transact(w3, token.functions.transferFrom(alice.address, bob.address, 50), bob.private_key)
    transact(w3, token.functions.burn(bob.address, 30), minter.private_key)

    assert token.functions.balanceOf(alice.address).call() == 450
    assert token.functions.balanceOf(bob.address).call() == 120
    assert token.functions.totalSupply().call() == 570
    transfers = token.events.Transfer().get_logs(from_block=0)
    assert [log["args"]["value"] for log in transfers] == [600, 100, 50, 30]
    approvals = w3.eth.get_logs(
        {"fromBlock": 0, "address": token.address, "topics": [token.events.Approval().topic]}
    )
    assert len(approvals) == 1


def test_revert_reasons_surface_through_web3(devnet: Any, w3: Web3) -> None:
    minter, alice = devnet.accounts()[:2]
    token = token_contract(w3, deploy_token(w3, minter.private_key, max_mint=CAP))

    with pytest.raises(ContractLogicError, match="only minter") as not_minter:
        token.functions.mint(alice.address, 1).call({"from": alice.address})
    assert str(not_minter.value.data).startswith("0x08c379a0")  # Error(string) payload intact
    with pytest.raises(ContractLogicError, match="cap exceeded"):
        token.functions.mint(alice.address, CAP + 1).estimate_gas({"from": minter.address})
    with pytest.raises(ContractLogicError, match="cap exceeded"):
        token.functions.mint(alice.address, 2**256 - 1).call({"from": minter.address})
    with pytest.raises(ContractLogicError, match="burn exceeds balance"):
        token.functions.burn(alice.address, 1).call({"from": minter.address})


def test_reverted_transaction_is_mined_with_status_zero(devnet: Any, w3: Web3) -> None:
    minter, alice = devnet.accounts()[:2]
    token = token_contract(w3, deploy_token(w3, minter.private_key, max_mint=CAP))
    tx = token.functions.mint(alice.address, CAP + 1).build_transaction(
        {
            "from": minter.address,
            "gas": 100_000,  # explicit gas skips the estimate that would refuse to build it
            "nonce": w3.eth.get_transaction_count(minter.address),
            "chainId": w3.eth.chain_id,
        }
    )
    tx_hash = w3.eth.send_raw_transaction(Account.sign_transaction(tx, minter.private_key).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.05)
    assert receipt["status"] == 0
    assert 0 < receipt["gasUsed"] < 100_000


def test_node_signed_send_transaction(devnet: Any, w3: Web3) -> None:
    """eth_sendTransaction from a dev account (anvil's unlocked accounts) works on both."""
    minter, alice = devnet.accounts()[:2]
    token = token_contract(w3, deploy_token(w3, minter.private_key, max_mint=CAP))
    tx_hash = token.functions.mint(alice.address, 7).transact({"from": minter.address})
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.05)["status"] == 1
    assert token.functions.balanceOf(alice.address).call() == 7
