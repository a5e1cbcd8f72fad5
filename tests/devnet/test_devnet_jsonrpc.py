"""The in-process EVM answers like a node over real HTTP, including to other processes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3
from web3.types import Wei

from devnet import InProcessEVM, RpcError, deploy_token, token_contract, transact

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def evm() -> Iterator[InProcessEVM]:
    with InProcessEVM(finality_depth=2) as net:
        yield net


def test_block_tags_and_lookups(evm: InProcessEVM) -> None:
    w3 = Web3(Web3.HTTPProvider(evm.rpc_url))
    evm.mine(5)
    latest = w3.eth.get_block("latest")
    assert latest["number"] == 5
    assert w3.eth.get_block("safe")["number"] == 3
    assert w3.eth.get_block("finalized")["number"] == 3
    assert w3.eth.get_block("earliest")["number"] == 0
    pending = evm.rpc("eth_getBlockByNumber", "pending", False)
    assert int(pending["number"], 16) == 6 and pending["hash"] is None
    assert w3.eth.get_block(latest["hash"])["number"] == 5
    assert evm.rpc("eth_getBlockByNumber", "0x63", False) is None
    assert len(w3.eth.get_block(2)["logsBloom"]) == 256
    evm.set_finality_depth(0)
    assert w3.eth.get_block("finalized")["number"] == 5


def test_identity_and_fee_methods(evm: InProcessEVM) -> None:
    w3 = Web3(Web3.HTTPProvider(evm.rpc_url))
    assert w3.net.version == "1337"
    assert w3.client_version.startswith("chainflow-devnet/py-evm-0.12.1b1")
    assert w3.eth.max_priority_fee == 10**9
    next_base_fee = int(evm.rpc("eth_getBlockByNumber", "pending", False)["baseFeePerGas"], 16)
    assert w3.eth.gas_price == next_base_fee + 10**9
    evm.mine(3)
    history = w3.eth.fee_history(3, "latest", [50])
    assert history["oldestBlock"] == 1
    assert len(history["baseFeePerGas"]) == 4 and len(history["gasUsedRatio"]) == 3
    assert history["reward"] == [[0], [0], [0]]


def test_logs_receipts_and_code(evm: InProcessEVM) -> None:
    w3 = Web3(Web3.HTTPProvider(evm.rpc_url))
    minter, alice, bob = evm.accounts()[:3]
    token = token_contract(w3, deploy_token(w3, minter.private_key))
    assert len(w3.eth.get_code(token.address)) > 100
    transact(w3, token.functions.mint(alice.address, 10), minter.private_key)
    transact(w3, token.functions.mint(bob.address, 20), minter.private_key)
    transfer_topic = token.events.Transfer().topic
    to_bob = "0x" + bytes(12).hex() + bob.address[2:].lower()
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "topics": [transfer_topic, None, to_bob]})
    assert len(logs) == 1 and logs[0]["blockNumber"] == 3
    receipts = evm.rpc("eth_getBlockReceipts", "0x3")
    assert receipts[0]["logs"][0]["logIndex"] == "0x0" and receipts[0]["status"] == "0x1"
    assert w3.eth.get_storage_at(token.address, 0) is not None
    assert w3.eth.get_transaction_by_block(3, 0)["to"] == token.address


def test_json_rpc_errors_and_batches(evm: InProcessEVM) -> None:
    with pytest.raises(RpcError) as info:
        evm.rpc("eth_doesNotExist")
    assert info.value.code == -32601
    with pytest.raises(RpcError) as info:
        evm.rpc("eth_getBalance", "0x1234")
    assert info.value.code == -32602
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
            {"jsonrpc": "2.0", "id": 2, "method": "net_version", "params": []},
        ]
    ).encode()
    request = urllib.request.Request(evm.rpc_url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        answers = json.loads(response.read())
    assert [a["result"] for a in answers] == ["0x539", "1337"]


def test_other_process_talks_to_it_by_url(evm: InProcessEVM) -> None:
    evm.mine(2)
    script = (
        "import sys; from web3 import Web3; "
        "w3 = Web3(Web3.HTTPProvider(sys.argv[1])); "
        "print(w3.eth.chain_id, w3.eth.block_number, w3.eth.get_balance(sys.argv[2]))"
    )
    first = evm.accounts()[0].address
    out = subprocess.run(
        [sys.executable, "-c", script, evm.rpc_url, first],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    assert out == ["1337", "2", str(10_000 * 10**18)]


def test_concurrent_clients_are_serialized(evm: InProcessEVM) -> None:
    from concurrent.futures import ThreadPoolExecutor

    accounts = evm.accounts()

    def send(i: int) -> int:
        w3 = Web3(Web3.HTTPProvider(evm.rpc_url))
        tx_hash = w3.eth.send_transaction(
            {"from": accounts[i].address, "to": accounts[0].address, "value": Wei(1)}
        )
        return int(w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.05)["status"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(send, range(1, 7))) == [1] * 6
    assert Web3(Web3.HTTPProvider(evm.rpc_url)).eth.block_number == 6
