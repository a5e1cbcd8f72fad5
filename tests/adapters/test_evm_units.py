"""Node-free parts of the EVM adapter: classification, fee bumps, request validation,
revert and log decoding."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_typing import ABIEvent
from eth_utils import event_abi_to_log_topic, event_signature_to_log_topic, function_signature_to_4byte_selector
from web3 import Web3

from adapters.evm import EvmChain, LocalSigner
from adapters.evm.abi import AbiRegistry
from adapters.evm.classify import classify
from adapters.evm.fees import bump, capped
from adapters.evm.revert import decode_revert, revert_data
from chainflow.chain.adapter import BroadcastOutcome, TxRejected
from chainflow.storage import codec
from devnet import load_token_artifact

K = BroadcastOutcome


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        # geth / erigon / the in-process devnet
        ("already known", K.ALREADY_KNOWN),
        ("nonce too low: address 0xf39f, tx: 0 state: 1", K.NONCE_TOO_LOW),
        ("replacement transaction underpriced", K.UNDERPRICED),
        ("transaction underpriced: tip needed 1, tip permitted 0", K.UNDERPRICED),
        ("max fee per gas less than block base fee: address 0x1, maxFeePerGas: 1, baseFee: 7", K.UNDERPRICED),
        ("insufficient funds for gas * price + value: address 0x1 have 0 want 1", K.UNFUNDED),
        ("intrinsic gas too low", K.REJECTED),
        ("invalid sender", K.REJECTED),
        ("nonce too high", K.UNKNOWN),
        ("txpool is full", K.UNKNOWN),
        # anvil 1.x (checked against anvil 1.7.1)
        ("transaction already imported", K.ALREADY_KNOWN),
        ("nonce too low", K.NONCE_TOO_LOW),
        ("Insufficient funds for gas * price + value", K.UNFUNDED),
        ("invalid chain id for signer", K.REJECTED),
        ("Failed to decode transaction", K.REJECTED),
        # other clients and hosted providers
        ("Known transaction", K.ALREADY_KNOWN),
        ("AlreadyKnown", K.ALREADY_KNOWN),
        ("NonceTooLow", K.NONCE_TOO_LOW),
        ("NONCE_TOO_LOW", K.NONCE_TOO_LOW),
        ("OldNonce", K.NONCE_TOO_LOW),
        ("nonce has already been used", K.NONCE_TOO_LOW),
        ("REPLACEMENT_UNDERPRICED", K.UNDERPRICED),
        ("InsufficientFunds", K.UNFUNDED),  # nethermind
        ("TRANSACTION_UPFRONT_COST_EXCEEDS_BALANCE", K.UNFUNDED),  # besu
        ("FeeTooLowToCompete", K.UNDERPRICED),
        ("fee cap less than block base fee", K.UNDERPRICED),
        ("NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER", K.UNKNOWN),
        ("daily request limit exceeded", K.UNKNOWN),
        ("Too Many Requests", K.UNKNOWN),
        # py-evm / eth-tester
        ("Invalid transaction nonce: Expected 3, but got 2", K.NONCE_TOO_LOW),
        ("Invalid transaction nonce: Expected 3, but got 9", K.UNKNOWN),
    ],
)
def test_classify_node_answers(message: str, outcome: BroadcastOutcome) -> None:
    assert classify(message) is outcome


def test_bump_rounds_up_to_ints_and_always_raises() -> None:
    fees = {"max_fee_per_gas": 1_000_000_001, "max_priority_fee_per_gas": 3}
    bumped = bump(fees, 1.125)
    assert bumped == {"max_fee_per_gas": 1_125_000_002, "max_priority_fee_per_gas": 4}
    assert all(type(v) is int for v in bumped.values())
    assert bump({"gas_price": 10}, 1.1) == {"gas_price": 11}  # 1.1 means 11/10, not 1.1000000000000000888
    assert bump({"gas_price": 0}, 1.5) == {"gas_price": 1}
    assert bump({"gas_price": 7}, 1) == {"gas_price": 8}  # a replacement must differ
    for value in (1, 9, 10**9 + 7, 3 * 10**18 + 1):
        out = bump({"f": value}, 1.1)["f"]
        assert out * 10 >= value * 11 and (out - 1) * 10 < value * 11 or out == value + 1
    with pytest.raises(ValueError, match="at least 1"):
        bump(fees, 0.9)
    # below the +10 % nodes ask of a replacement, the factor is raised to it
    assert bump({"gas_price": 100}, 1.05) == bump({"gas_price": 100}, 1) == {"gas_price": 110}
    assert bump({"max_fee_per_gas": 1_000, "max_priority_fee_per_gas": 100}, 1.0, 10_000) == {
        "max_fee_per_gas": 1_100, "max_priority_fee_per_gas": 110}
    with pytest.raises(ValueError, match="int number of wei"):
        bump({"gas_price": 1.5}, 1.2)  # type: ignore[dict-item]


@pytest.fixture
def offline_chain() -> EvmChain:
    """An adapter that is never asked to talk: prepare() is local."""
    return EvmChain("offline", "http://127.0.0.1:9", LocalSigner.from_key(Account.create().key))


GOOD = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def test_prepare_plain_transfer(offline_chain: EvmChain) -> None:
    request = offline_chain.prepare({"to": GOOD.lower(), "value": 10**30})
    assert request == {"to": GOOD, "value": 10**30, "data": "0x", "gas": None, "contract": None, "abi_ref": None}
    assert codec.roundtrip(request)[1] == request
    raw = offline_chain.prepare({"to": GOOD, "data": b"\xde\xad", "gas": 50_000})
    assert raw["data"] == "0xdead" and raw["gas"] == 50_000 and raw["value"] == 0


@pytest.mark.parametrize(
    ("tx", "match"),
    [
        ({"to": "0x1234", "value": 1}, "field 'to'"),
        ({"to": "0x70997970c51812dc3a010c7d01b50e0d17dc79C8", "value": 1}, "field 'to'"),  # bad checksum
        ({"value": 1}, "field 'to'"),
        ({"to": GOOD, "value": -1}, "value must be an int number of wei"),
        ({"to": GOOD, "value": 1.5}, "value must be an int number of wei"),
        ({"to": GOOD, "value": True}, "value must be an int number of wei"),
        ({"to": GOOD, "value": "1"}, "value must be an int number of wei"),
        ({"to": GOOD, "value": 2**256}, "uint256"),
        ({"to": GOOD, "data": "dead"}, "field 'data'"),
        ({"to": GOOD, "data": "0xabc"}, "field 'data'"),
        ({"to": GOOD, "gas": 100.0}, "field 'gas'"),
        ({"to": GOOD, "gas": 20_000}, "field 'gas'"),
        ({"to": GOOD, "nonce": 3}, "unsupported field"),
    ],
)
def test_prepare_rejects_bad_input_naming_the_field(offline_chain: EvmChain, tx: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        offline_chain.prepare(tx)


def test_prepare_rejects_other_types(offline_chain: EvmChain) -> None:
    with pytest.raises(ValueError, match="contract function call"):
        offline_chain.prepare("0xdeadbeef")


def test_prepare_contract_call_encodes_and_learns_the_abi(offline_chain: EvmChain) -> None:
    token = Web3().eth.contract(address=Web3.to_checksum_address(GOOD), abi=load_token_artifact().abi)
    request = offline_chain.prepare(token.functions.mint(GOOD, 5))
    selector = "0x" + function_signature_to_4byte_selector("mint(address,uint256)").hex()
    assert request["to"] == GOOD and request["value"] == 0 and request["gas"] is None
    assert request["data"].startswith(selector) and request["contract"] == GOOD
    assert codec.roundtrip(request)[1] == request
    with pytest.raises(ValueError, match="no address"):
        offline_chain.prepare(Web3().eth.contract(abi=load_token_artifact().abi).functions.mint(GOOD, 5))


def _error_payload(reason: str) -> str:
    return "0x08c379a0" + abi_encode(["string"], [reason]).hex()


def test_revert_reasons() -> None:
    assert decode_revert(revert_data(_error_payload("only minter"))) == "only minter"
    panic = bytes.fromhex("4e487b71") + abi_encode(["uint256"], [0x11])
    assert decode_revert(panic) == "panic 0x11 (arithmetic overflow or underflow)"
    assert decode_revert(None, "execution reverted: cap exceeded") == "cap exceeded"
    assert decode_revert(None, "execution reverted") == "reverted without a reason"
    assert decode_revert(b"") == "reverted without a reason"
    assert decode_revert(revert_data(_error_payload(""))) == "reverted with an empty reason"
    assert decode_revert(bytes.fromhex("08c379a0") + b"\x01").startswith("custom error 0x08c379a0")  # malformed
    assert revert_data({"data": _error_payload("x")}) is not None  # nested form
    unknown = bytes.fromhex("deadbeef") + abi_encode(["uint256"], [7])
    assert decode_revert(unknown).startswith("custom error 0xdeadbeef")

    registry = AbiRegistry()
    registry.learn([{"type": "error", "name": "Unauthorized",
                     "inputs": [{"name": "who", "type": "address"}, {"name": "need", "type": "uint256"}]}])
    custom = function_signature_to_4byte_selector("Unauthorized(address,uint256)") + abi_encode(
        ["address", "uint256"], [GOOD, 3])
    assert decode_revert(custom, abis=registry) == f"Unauthorized({GOOD}, 3)"


def test_log_decoding_tells_same_topic_events_apart() -> None:
    """ERC-20 and ERC-721 Transfer share topic0; the emitting contract's ABI wins, and a
    non-fitting candidate falls through to the next."""
    erc20 = load_token_artifact().abi
    erc721 = [{"type": "event", "name": "Transfer", "anonymous": False, "inputs": [
        {"name": "from", "type": "address", "indexed": True},
        {"name": "to", "type": "address", "indexed": True},
        {"name": "tokenId", "type": "uint256", "indexed": True}]}]
    nft = "0x" + "22" * 20
    registry = AbiRegistry()
    registry.learn(erc20)
    registry.learn(erc721, nft)
    topic = "0x" + event_signature_to_log_topic("Transfer(address,address,uint256)").hex()
    pad = "0x" + "00" * 12
    a, b = pad + GOOD[2:].lower(), pad + "33" * 20
    nft_log = {"address": nft, "topics": [topic, a, b, "0x" + (9).to_bytes(32, "big").hex()], "data": "0x",
               "logIndex": "0x1"}
    decoded = registry.decode_log(nft_log)
    assert decoded["event"] == "Transfer" and decoded["args"]["tokenId"] == 9 and decoded["log_index"] == 1
    erc20_log = {"address": "0x" + "44" * 20, "topics": [topic, a, b],
                 "data": "0x" + (5).to_bytes(32, "big").hex(), "logIndex": 0}
    assert registry.decode_log(erc20_log)["args"] == {"sender": GOOD, "receiver": Web3.to_checksum_address(
        "0x" + "33" * 20), "value": 5}
    unknown = {"address": "0x" + "55" * 20, "topics": ["0x" + "AB" * 32], "data": "0xFF", "logIndex": 2}
    assert registry.decode_log(unknown) == {"address": Web3.to_checksum_address("0x" + "55" * 20), "log_index": 2,
                                            "topics": ["0x" + "ab" * 32], "data": "0xff"}


def test_log_decoding_names_struct_fields_and_keeps_indexed_dynamic_values_as_hashes() -> None:
    """Pins what the decoder (web3's public ``ContractEvent.process_log``) yields: tuple
    arguments as dicts named by their components, an indexed ``string`` as its keccak
    topic, addresses checksummed, bytes as lowercase hex; a log with too few topics for
    the ABI falls back to the raw form."""
    from eth_utils import keccak

    paid = {"type": "event", "name": "Paid", "anonymous": False, "inputs": [
        {"name": "memo", "type": "string", "indexed": True},
        {"name": "payer", "type": "address", "indexed": True},
        {"name": "info", "type": "tuple", "indexed": False,
         "components": [{"name": "amount", "type": "uint256"}, {"name": "token", "type": "address"}]},
        {"name": "note", "type": "bytes", "indexed": False}]}
    registry = AbiRegistry()
    registry.learn([paid])
    token = "0x" + "ab" * 20
    log = {"address": "0x" + "11" * 20, "logIndex": "0x3",
           "topics": ["0x" + event_signature_to_log_topic("Paid(string,address,(uint256,address),bytes)").hex(),
                      "0x" + keccak(text="hello").hex(), "0x" + "00" * 12 + "22" * 20],
           "data": "0x" + abi_encode(["(uint256,address)", "bytes"], [(5, token), b"\x01\x02"]).hex()}
    assert registry.decode_log(log) == {
        "event": "Paid", "address": Web3.to_checksum_address("0x" + "11" * 20), "log_index": 3,
        "args": {"memo": "0x" + keccak(text="hello").hex(), "payer": Web3.to_checksum_address("0x" + "22" * 20),
                 "info": {"amount": 5, "token": Web3.to_checksum_address(token)}, "note": "0x0102"}}
    short = {**log, "topics": log["topics"][:2]}
    assert registry.decode_log(short) == {"address": Web3.to_checksum_address("0x" + "11" * 20), "log_index": 3,
                                          "topics": short["topics"], "data": log["data"]}


def test_prepare_remembers_an_equal_call_and_returns_fresh_requests(offline_chain: EvmChain) -> None:
    """A resumed run prepares its contract call again: the calldata of an equal call is
    remembered, keyed by argument types, and every request is a new dict."""
    from adapters.evm.request import _frozen

    abi = load_token_artifact().abi
    token = Web3().eth.contract(address=Web3.to_checksum_address(GOOD), abi=abi)
    first = offline_chain.prepare(token.functions.mint(GOOD, 5))
    first["gas"] = 1  # callers own what they get
    again = offline_chain.prepare(token.functions.mint(GOOD, 5))
    assert again == {**first, "gas": None} and again is not first
    assert again["data"] == str(token.functions.mint(GOOD, 5)._encode_transaction_data()).lower()
    other = Web3().eth.contract(address=Web3.to_checksum_address("0x" + "44" * 20), abi=abi)
    elsewhere = offline_chain.prepare(other.functions.mint(GOOD, 5))
    assert elsewhere["to"] == elsewhere["contract"] == Web3.to_checksum_address("0x" + "44" * 20)
    assert elsewhere["data"] == again["data"]
    assert offline_chain.prepare(token.functions.mint(GOOD, 6))["data"] != again["data"]
    assert _frozen((1,)) != _frozen((True,))
    assert _frozen(([1],)) is None and _frozen((GOOD, "alice.eth")) is None and _frozen((1.0,)) is None


def test_log_decoding_matches_web3s_process_log() -> None:
    """The registry decodes as ``ContractEvent.process_log`` does (then ``plain``), for
    nested tuples and arrays holding addresses, unnamed arguments (the last one wins, as in
    web3's dict) and indexed values."""
    from adapters.evm.values import plain

    events: list[ABIEvent] = [
        {"type": "event", "name": "Batch", "anonymous": False, "inputs": [
            {"name": "who", "type": "address", "indexed": True},
            {"name": "tag", "type": "bytes32", "indexed": True},
            {"name": "items", "type": "tuple[]", "indexed": False, "components": [
                {"name": "to", "type": "address"}, {"name": "amounts", "type": "uint256[]"},
                {"name": "meta", "type": "tuple", "components": [{"name": "ok", "type": "bool"},
                                                                 {"name": "peers", "type": "address[2]"}]}]},
            {"name": "note", "type": "string", "indexed": False}]},
        {"type": "event", "name": "Unnamed", "anonymous": False, "inputs": [
            {"name": "n", "type": "int8", "indexed": True}, {"name": "", "type": "bytes", "indexed": False},
            {"name": "", "type": "uint8", "indexed": False}]},
    ]
    a, b, c = ("0x" + d * 20 for d in ("ab", "cd", "ef"))
    logs = [
        (["0x" + "00" * 12 + a[2:], "0x" + "77" * 32],
         abi_encode(["(address,uint256[],(bool,address[2]))[]", "string"],
                    [[(b, [1, 2], (True, (a, c))), (c, [], (False, (b, b)))], "hi"])),
        (["0x" + "ff" * 32], abi_encode(["bytes", "uint8"], [b"\x00\x01", 9])),
    ]
    registry = AbiRegistry()
    registry.learn(events)
    for event, (topics, data) in zip(events, logs):
        topic0 = "0x" + event_abi_to_log_topic(event).hex()
        log: dict[str, Any] = {"address": a, "topics": [topic0, *topics], "data": "0x" + data.hex(), "logIndex": 4}
        reference = Web3().eth.contract(abi=[event]).events[event["name"]].process_log(
            {"topics": [bytes.fromhex(t[2:]) for t in log["topics"]], "data": data, "address": a, "logIndex": 4,
             "transactionIndex": 0, "transactionHash": b"", "blockHash": b"", "blockNumber": 0})
        assert registry.decode_log(log) == {"event": event["name"], "address": Web3.to_checksum_address(a),
                                            "log_index": 4,
                                            "args": {str(k): plain(v) for k, v in reference["args"].items()}}
        too_few = {**log, "topics": [topic0]}
        assert "event" not in registry.decode_log(too_few)


def test_new_calls_encode_as_web3_does() -> None:
    """Calls with elementary arguments web3 passes on unchanged are encoded by the codec
    directly; the result is pinned to web3's own encoding, and what web3 would normalise
    (hex text for bytes, composite types) goes through web3.  (Arguments web3 refuses
    never make a call: building it raises.)"""
    from adapters.evm.request import _calldata

    abi: list[dict[str, Any]] = [
        {"type": "function", "name": "f", "stateMutability": "nonpayable", "outputs": [], "inputs": [
            {"name": "a", "type": "address"}, {"name": "n", "type": "uint256"}, {"name": "m", "type": "int8"},
            {"name": "ok", "type": "bool"}, {"name": "tag", "type": "bytes4"}, {"name": "blob", "type": "bytes"}]},
        {"type": "function", "name": "g", "stateMutability": "nonpayable", "outputs": [], "inputs": [
            {"name": "xs", "type": "uint256[]"}, {"name": "s", "type": "string"}]},
    ]
    contract = Web3().eth.contract(address=Web3.to_checksum_address(GOOD), abi=abi)
    digits = "0x" + "12" * 20  # no letters: its checksum form is itself
    calls = [
        contract.functions.f(Web3.to_checksum_address(GOOD), 2**256 - 1, -128, True, b"\x01\x02\x03\x04", b""),
        contract.functions.f(digits, 0, 127, False, b"\xff" * 4, b"\x00" * 70),
        contract.functions.f(Web3.to_checksum_address(GOOD), 1, 0, True, "0x01020304", "0xabcd"),  # hex text
        contract.functions.g([1, 2, 3], "hi"),
    ]
    for call in calls:
        assert _calldata(call) == str(call._encode_transaction_data()).lower()


def test_a_fee_budget_caps_bumps_and_refuses_one_it_cannot_hold() -> None:
    fees = {"max_fee_per_gas": 1_000, "max_priority_fee_per_gas": 100}
    assert bump(fees, 1.125, 10_000) == bump(fees, 1.125) == {"max_fee_per_gas": 1_125,
                                                              "max_priority_fee_per_gas": 113}
    # clipped, but still +10 % on both fields: what a node takes as a replacement
    assert bump(fees, 1.125, 1_100) == {"max_fee_per_gas": 1_100, "max_priority_fee_per_gas": 113}
    for budget in (1_099, 1_000):
        with pytest.raises(TxRejected, match="fee budget exhausted: max_fee_per_gas 1000 wei cannot rise by the "
                                             rf"\+10 % nodes ask of a replacement within the max_fee_per_gas "
                                             f"of {budget} wei") as caught:
            bump(fees, 1.125, budget)
        assert caught.value.reverted is False
    # the tip is never above the max fee
    assert bump({"max_fee_per_gas": 1_000, "max_priority_fee_per_gas": 1_000}, 1.2, 1_150) == {
        "max_fee_per_gas": 1_150, "max_priority_fee_per_gas": 1_150}
    assert bump({"gas_price": 50}, 1.5, 60) == {"gas_price": 60}
    assert capped({"max_fee_per_gas": 900, "max_priority_fee_per_gas": 800}, 500) == {
        "max_fee_per_gas": 500, "max_priority_fee_per_gas": 500}


async def test_signing_above_the_fee_budget_is_refused_before_the_node_is_asked() -> None:
    chain = EvmChain("capped", "http://127.0.0.1:9", LocalSigner.from_key(Account.create().key),
                     max_fee_per_gas=2_000)
    request = {**chain.prepare({"to": GOOD, "value": 1}), "gas": 21_000}
    with pytest.raises(TxRejected, match="a fee of 2001 wei per gas exceeds the max_fee_per_gas 2000 wei of "
                                         "chain 'capped'"):
        await chain.sign(request, 0, {"max_fee_per_gas": 2_001, "max_priority_fee_per_gas": 1})
    with pytest.raises(TxRejected, match="a fee of 2001 wei per gas exceeds"):
        await chain.sign(request, 0, {"gas_price": 2_001})


@pytest.mark.parametrize("budget", [0, -1, 1.5, True, "100"])
def test_a_bad_fee_budget_is_refused_naming_it(budget: Any) -> None:
    with pytest.raises(ValueError, match="max_fee_per_gas must be a positive int number of wei"):
        EvmChain("x", "http://127.0.0.1:9", LocalSigner.from_key(Account.create().key), max_fee_per_gas=budget)


@pytest.mark.parametrize(("options", "culprit"), [
    ({"timeout": float("inf")}, "timeout"), ({"timeout": float("nan")}, "timeout"), ({"timeout": True}, "timeout"),
    ({"fee_history_blocks": 1.5}, "fee_history_blocks"), ({"fee_history_blocks": True}, "fee_history_blocks"),
    ({"chain_id": True}, "chain_id"),
    ({"rpc": "localhost:8545"}, "rpc"), ({"rpc": "ftp://node/"}, "rpc"), ({"rpc": ""}, "rpc"),
])
def test_a_bad_setting_is_refused_when_the_chain_is_built(options: dict[str, Any], culprit: str) -> None:
    """Refused at construction, naming the setting: accepted, an infinite timeout made
    every call an outage, a fractional fee history broke every fee quote, a URL without
    a scheme failed each call as an outage retried for minutes."""
    settings = {"rpc": "http://127.0.0.1:8545", **options}
    with pytest.raises((ValueError, TypeError), match=culprit):
        EvmChain("x", settings.pop("rpc"), LocalSigner.from_key(Account.create().key), **settings)


def test_the_app_names_a_default_retry_or_tracker_of_the_wrong_type(tmp_path: Any) -> None:
    import chainflow as cf

    with pytest.raises(TypeError, match="default_retry"):
        cf.Chainflow(f"sqlite:///{tmp_path}/a.db", default_retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tracker"):
        cf.Chainflow(f"sqlite:///{tmp_path}/a.db", tracker={"window": 5})  # type: ignore[arg-type]
    assert not (tmp_path / "a.db").exists(), "refused before the database was touched"
