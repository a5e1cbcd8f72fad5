"""Manual mining, base fee control and node-like mempool admission."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import Web3RPCError

from devnet import Anvil, InProcessEVM, RpcError
from devnet.accounts import DevAccount
from devnet.mempool import Mempool

pytestmark = pytest.mark.timeout(60)

GWEI = 10**9


def _transfer(
    w3: Web3, sender: DevAccount, nonce: int, *, max_fee: int = 50 * GWEI, tip: int = GWEI, value: int = 1
) -> bytes:
    tx = {
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": value,
        "gas": 21_000,
        "nonce": nonce,
        "chainId": w3.eth.chain_id,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": tip,
    }
    return bytes(Account.sign_transaction(tx, sender.private_key).raw_transaction)


def test_no_mining_keeps_txs_pending_until_mined(make_net: Any, node_kind: str) -> None:
    options = {"no_mining": True} if node_kind == "anvil" else {"automine": False}
    net = make_net(base_fee=7 * GWEI, **options)
    w3 = Web3(Web3.HTTPProvider(net.rpc_url))
    sender = net.accounts()[0]
    assert w3.eth.get_block("latest")["baseFeePerGas"] == 7 * GWEI

    first = w3.eth.send_raw_transaction(_transfer(w3, sender, 0))
    w3.eth.send_raw_transaction(_transfer(w3, sender, 1))
    assert w3.eth.block_number == 0
    assert w3.eth.get_transaction_count(sender.address, "pending") == 2
    assert w3.eth.get_transaction_count(sender.address, "latest") == 0
    assert net.rpc("eth_getTransactionReceipt", first.to_0x_hex()) is None
    pending = net.mempool()["pending"]
    (sender_txs,) = pending.values()
    assert sorted(sender_txs) == ["0", "1"]

    net.mine()
    assert w3.eth.block_number == 1
    block = w3.eth.get_block(1)
    assert len(block["transactions"]) == 2
    # EIP-1559 from the configured start; never rises after an empty parent.
    assert block["baseFeePerGas"] <= 7 * GWEI
    assert w3.eth.get_transaction_receipt(first)["status"] == 1
    assert net.mempool()["pending"] == {}


def test_drop_transaction(make_net: Any, node_kind: str) -> None:
    options = {"no_mining": True} if node_kind == "anvil" else {"automine": False}
    net = make_net(**options)
    w3 = Web3(Web3.HTTPProvider(net.rpc_url))
    tx_hash = w3.eth.send_raw_transaction(_transfer(w3, net.accounts()[0], 0))
    net.drop_tx(tx_hash.to_0x_hex())
    assert net.mempool()["pending"] == {}
    net.mine()
    assert w3.eth.get_block(1)["transactions"] == []


def test_automine_toggle(devnet: Any, w3: Web3) -> None:
    sender = devnet.accounts()[0]
    devnet.set_automine(False)
    w3.eth.send_raw_transaction(_transfer(w3, sender, 0))
    assert w3.eth.block_number == 0
    devnet.set_automine(True)  # flushes the pending tx
    tx_hash = w3.eth.send_raw_transaction(_transfer(w3, sender, 1))
    # anvil answers a send before its miner task has mined it: wait for the block.
    w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.05)
    assert w3.eth.get_transaction_count(sender.address) == 2


@pytest.mark.usefixtures("anvil_installed")
def test_anvil_next_base_fee() -> None:
    with Anvil(no_mining=True, base_fee=3 * GWEI) as net:
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        net.set_next_base_fee(42 * GWEI)
        net.mine()
        assert w3.eth.get_block("latest")["baseFeePerGas"] == 42 * GWEI
        with pytest.raises(Web3RPCError, match="base fee"):
            w3.eth.send_raw_transaction(_transfer(w3, net.accounts()[0], 0, max_fee=GWEI, tip=GWEI))


def test_inprocess_admission_errors_match_geth() -> None:
    with InProcessEVM(automine=False) as net:
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        alice, bob = net.accounts()[:2]
        original = _transfer(w3, alice, 0, max_fee=10 * GWEI, tip=GWEI)
        w3.eth.send_raw_transaction(original)

        def rejected(raw: bytes) -> str:
            with pytest.raises(RpcError) as info:
                net.rpc("eth_sendRawTransaction", "0x" + raw.hex())
            assert info.value.code == -32000
            return info.value.message

        assert rejected(original) == "already known"
        assert rejected(_transfer(w3, alice, 0, max_fee=10 * GWEI + 1, tip=GWEI + 1, value=2)) == (
            "replacement transaction underpriced"
        )
        bumped = w3.eth.send_raw_transaction(
            _transfer(w3, alice, 0, max_fee=11 * GWEI, tip=2 * GWEI, value=3)
        )
        assert "insufficient funds" in rejected(_transfer(w3, bob, 0, value=10**30))
        wrong_chain = Account.sign_transaction(
            {"to": bob.address, "value": 1, "gas": 21_000, "nonce": 1, "chainId": 1, "gasPrice": GWEI},
            alice.private_key,
        ).raw_transaction
        assert "chain id" in rejected(bytes(wrong_chain))
        assert "intrinsic gas too low" == rejected(
            bytes(
                Account.sign_transaction(
                    {
                        "to": bob.address,
                        "value": 1,
                        "gas": 20_000,
                        "nonce": 1,
                        "chainId": 1337,
                        "gasPrice": GWEI,
                    },
                    alice.private_key,
                ).raw_transaction
            )
        )

        gap = w3.eth.send_raw_transaction(_transfer(w3, alice, 5))
        content = net.mempool()
        assert list(content["queued"][alice.address.lower()]) == ["5"]
        net.mine()
        assert w3.eth.get_transaction_receipt(bumped)["status"] == 1
        assert net.rpc("eth_getTransactionByHash", gap.to_0x_hex())["blockNumber"] is None
        assert rejected(original).startswith("nonce too low")


def test_inprocess_underpriced_tx_waits_for_base_fee() -> None:
    with InProcessEVM(automine=False, base_fee=10 * GWEI) as net:
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        sender = net.accounts()[0]
        # geth admits fee caps below the current base fee and includes them once it drops.
        tx_hash = w3.eth.send_raw_transaction(_transfer(w3, sender, 0, max_fee=8 * GWEI, tip=GWEI))
        net.mine()  # genesis 10 gwei -> block 1 at 8.75 gwei: cannot pay
        assert w3.eth.get_block(1)["baseFeePerGas"] > 8 * GWEI
        assert w3.eth.get_block(1)["transactions"] == []
        net.mine()  # block 2 at ~7.66 gwei: included
        assert w3.eth.get_transaction_receipt(tx_hash)["blockNumber"] == 2


def test_mempool_orders_by_tip_and_respects_nonces() -> None:
    pool = Mempool()

    class FakeTx:
        def __init__(self, sender: bytes, nonce: int, tip: int) -> None:
            self.hash = sender + bytes([nonce, tip])
            self.sender = sender
            self.nonce = nonce
            self.max_fee_per_gas = 100
            self.max_priority_fee_per_gas = tip

    a, b = b"a" * 20, b"b" * 20
    for tx in (FakeTx(a, 0, 1), FakeTx(a, 1, 50), FakeTx(b, 0, 10), FakeTx(b, 2, 99)):
        pool.add(pool.make_entry(tx), state_nonce=0)
    chosen = pool.select_for_block(lambda sender: 0, base_fee=0, include=lambda entry: True)
    assert [(e.sender[:1], e.nonce) for e in chosen] == [(b"b", 0), (b"a", 0), (b"a", 1)]
    pending, queued = pool.split(lambda sender: 0)
    assert {(e.sender[:1], e.nonce) for e in pending} == {(b"a", 0), (b"a", 1), (b"b", 0)}
    assert {(e.sender[:1], e.nonce) for e in queued} == {(b"b", 2)}
    assert pool.pending_nonce(a, 0) == 2 and pool.pending_nonce(b, 0) == 1
