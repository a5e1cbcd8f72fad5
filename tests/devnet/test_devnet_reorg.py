"""Reorg injection gives the same observable result on both devnets."""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3

from devnet import (
    deploy_token,
    mark_fork_point,
    reorg,
    reorg_to,
    rollback,
    token_contract,
    transact,
)

pytestmark = pytest.mark.timeout(60)


def _hash_at(w3: Web3, number: int) -> str:
    return w3.eth.get_block(number)["hash"].to_0x_hex()


def test_reorg_changes_block_hashes_at_same_heights(devnet: Any, w3: Web3) -> None:
    devnet.mine(5)
    before = {n: _hash_at(w3, n) for n in range(6)}

    result = reorg(devnet, 2)

    assert w3.eth.block_number == 5
    assert result.fork_height == 3 and result.depth == 2
    assert result.old_hashes == [before[4], before[5]]
    for n in (4, 5):
        assert _hash_at(w3, n) != before[n]
        assert _hash_at(w3, n) in result.new_hashes
    assert all(_hash_at(w3, n) == before[n] for n in range(4))
    assert w3.eth.get_block(4)["parentHash"].to_0x_hex() == before[3]
    assert w3.eth.get_block(5)["parentHash"].to_0x_hex() == _hash_at(w3, 4)
    assert devnet.rpc("eth_getBlockByHash", before[5], False) is None  # orphaned block is gone


def test_reorg_drops_or_replays_transactions(devnet: Any, w3: Web3) -> None:
    minter, alice = devnet.accounts()[:2]
    token = token_contract(w3, deploy_token(w3, minter.private_key))
    mint = transact(w3, token.functions.mint(alice.address, 5), minter.private_key)
    tx_hash = mint["transactionHash"].to_0x_hex()
    devnet.mine(1)

    replayed = reorg(devnet, 2, replay_txs=True)
    assert replayed.orphaned_txs == [tx_hash] == replayed.replayed_txs
    again = w3.eth.get_transaction_receipt(mint["transactionHash"])
    assert again["blockNumber"] == mint["blockNumber"]
    assert again["blockHash"] != mint["blockHash"]
    assert token.functions.totalSupply().call() == 5

    dropped = reorg(devnet, 2, extra_blocks=1)
    assert dropped.orphaned_txs == [tx_hash] and dropped.replayed_txs == []
    assert len(dropped.new_hashes) == 3 and w3.eth.block_number == mint["blockNumber"] + 2
    assert devnet.rpc("eth_getTransactionReceipt", tx_hash) is None
    assert token.functions.totalSupply().call() == 0


def test_snapshot_fork_point_reorg(devnet: Any, w3: Web3) -> None:
    minter, alice = devnet.accounts()[:2]
    token = token_contract(w3, deploy_token(w3, minter.private_key))
    point = mark_fork_point(devnet)
    first = transact(w3, token.functions.mint(alice.address, 1), minter.private_key)
    second = transact(w3, token.functions.mint(alice.address, 2), minter.private_key)
    old_heads = [first["blockHash"].to_0x_hex(), second["blockHash"].to_0x_hex()]

    result = reorg_to(devnet, point, new_blocks=3, replay_txs=True)

    assert result.old_hashes == old_heads
    assert len(result.new_hashes) == 3 and w3.eth.block_number == point.height + 3
    assert not set(result.new_hashes) & set(old_heads)
    assert token.functions.totalSupply().call() == 3  # both mints replayed on the new branch
    tx = transact(w3, token.functions.mint(alice.address, 4), minter.private_key)
    assert tx["blockNumber"] == point.height + 4


def test_rollback_shortens_chain(devnet: Any, w3: Web3) -> None:
    devnet.mine(4)
    removed = rollback(devnet, 3)
    assert w3.eth.block_number == 1 and len(removed) == 3
    devnet.mine(1)
    assert _hash_at(w3, 2) not in removed


def test_snapshot_revert_round_trip(devnet: Any, w3: Web3) -> None:
    snap = devnet.snapshot()
    devnet.mine(3)
    assert devnet.revert(snap) is True
    assert w3.eth.block_number == 0
    assert devnet.revert(snap) is False  # snapshots are single use on both devnets


def test_reorg_and_rollback_invalidate_snapshots_of_cut_blocks(devnet: Any, w3: Web3) -> None:
    """anvil 1.7.1 semantics, mirrored in-process: snapshots above the fork point die."""
    devnet.mine(3)
    below = devnet.snapshot()  # at height 3
    devnet.mine(2)
    above = devnet.snapshot()  # at height 5
    reorg(devnet, 1)  # fork point 4
    assert devnet.revert(above) is False
    assert w3.eth.block_number == 5
    devnet.mine(1)
    rollback(devnet, 2)  # fork point 4; height-3 snapshot survives
    assert devnet.revert(below) is True
    assert w3.eth.block_number == 3
