"""The Bitcoin adapter's offline parts: networks, addresses, amounts, dust, fee math,
coin selection and what the engine hands it (prepare, merge, member receipts), with
no node running."""

from __future__ import annotations

import os
from typing import Any
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.bitcoin import AddressError, BitcoinReceipt, network, names
from adapters.bitcoin.addresses import address_of, dust_limit, script_for
from adapters.bitcoin.classify import classify
from adapters.bitcoin.fees import bump, fee_for, from_node, vsize
from adapters.bitcoin.values import payment_amount, satoshis
from chainflow.chain.adapter import BroadcastOutcome, Coin, Receipt, TxRejected

from ._btc import offline_chain

NETWORKS = names()

# BIP173/BIP350 and well-known mainnet addresses with the scripts they encode
VECTORS = [
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
]


@pytest.mark.parametrize("address,script", VECTORS)
def test_known_mainnet_addresses_decode_to_their_scripts(address: str, script: str) -> None:
    mainnet = network("mainnet")
    assert script_for(address, mainnet, "btc").hex() == script
    assert address_of(bytes.fromhex(script), mainnet) == address


def test_uppercase_bech32_is_the_same_address() -> None:
    address, script = VECTORS[0]
    assert script_for(address.upper(), network("mainnet"), "btc").hex() == script


@pytest.mark.parametrize("net", NETWORKS)
@pytest.mark.parametrize("kind", ["p2wpkh", "p2wsh", "p2tr", "p2pkh", "p2sh"])
def test_every_network_round_trips_every_payee_type(net: str, kind: str) -> None:
    body = os.urandom(32 if kind in ("p2wsh", "p2tr") else 20)
    script = {
        "p2wpkh": b"\x00\x14" + body,
        "p2wsh": b"\x00\x20" + body,
        "p2tr": b"\x51\x20" + body,
        "p2pkh": b"\x76\xa9\x14" + body + b"\x88\xac",
        "p2sh": b"\xa9\x14" + body + b"\x87",
    }[kind]
    params = network(net)
    address = address_of(script, params)
    assert address is not None
    if kind.startswith("p2w") or kind == "p2tr":
        assert address.startswith(params.hrp + "1")
    assert script_for(address, params, "btc") == script


def test_litecoin_regtest_has_its_own_prefixes() -> None:
    ltc = network("litecoin-regtest")
    assert (ltc.hrp, ltc.p2pkh, ltc.p2sh, ltc.wif, ltc.chain) == ("rltc", 111, 58, 239, "regtest")
    address = address_of(b"\x00\x14" + bytes(20), ltc)
    assert address is not None and address.startswith("rltc1q")


def test_an_address_of_another_network_names_both() -> None:
    mainnet_address = VECTORS[0][0]
    with pytest.raises(AddressError) as caught:
        script_for(mainnet_address, network("regtest"), "btc")
    assert str(caught.value) == f"{mainnet_address!r} is a mainnet address; chain 'btc' is on regtest"
    testnet = address_of(b"\x00\x14" + bytes(20), network("testnet"))
    with pytest.raises(AddressError, match=r"is a testnet/signet address; chain 'ltc' is on litecoin-regtest"):
        script_for(str(testnet), network("litecoin-regtest"), "ltc")
    with pytest.raises(AddressError, match=r"is a mainnet address; chain 'btc' is on regtest"):
        script_for(VECTORS[3][0], network("regtest"), "btc")  # base58 P2PKH


def test_checksum_errors_say_so() -> None:
    bech = VECTORS[0][0]
    typo = bech[:-1] + ("5" if bech[-1] != "5" else "6")
    with pytest.raises(AddressError, match="checksum or encoding is wrong"):
        script_for(typo, network("mainnet"), "btc")
    base = VECTORS[3][0]
    typo = base[:-1] + ("3" if base[-1] != "3" else "4")
    with pytest.raises(AddressError, match="base58 checksum does not match"):
        script_for(typo, network("mainnet"), "btc")
    with pytest.raises(AddressError, match="outside the base58 alphabet"):
        script_for("0OIl", network("mainnet"), "btc")


def test_witness_programs_nodes_do_not_relay_are_refused() -> None:
    from bech32m import encode

    v2 = encode("bcrt", 2, bytes(32))
    with pytest.raises(AddressError, match="witness version 2"):
        script_for(v2, network("regtest"), "btc")


@pytest.mark.parametrize("net,script,limit", [
    ("regtest", b"\x00\x14" + bytes(20), 294),
    ("regtest", b"\x00\x20" + bytes(32), 330),
    ("regtest", b"\x51\x20" + bytes(32), 330),
    ("regtest", b"\x76\xa9\x14" + bytes(20) + b"\x88\xac", 546),
    ("regtest", b"\xa9\x14" + bytes(20) + b"\x87", 540),
    ("litecoin-regtest", b"\x00\x14" + bytes(20), 2940),
])
def test_dust_limits_are_bitcoin_cores(net: str, script: bytes, limit: int) -> None:
    assert dust_limit(script, network(net)) == limit


def test_a_payment_below_dust_is_refused_at_the_limit_accepted() -> None:
    btc = offline_chain()
    payee = address_of(b"\x00\x14" + bytes(20), network("regtest"))
    assert payee is not None
    assert btc.pay(payee, sats=294) == {"to": payee, "sats": 294}
    with pytest.raises(ValueError, match="below the dust limit of 294 sats"):
        btc.pay(payee, sats=293)


@pytest.mark.parametrize("amount", [1500.0, Decimal("1500"), True, "1500", None])
def test_amounts_must_be_int_satoshis(amount: object) -> None:
    btc = offline_chain()
    with pytest.raises(ValueError, match="amounts are integer satoshis"):
        btc.pay(btc.sender(), sats=amount)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amounts are integer satoshis"):
        btc.prepare({"to": btc.sender(), "sats": amount})
    with pytest.raises(ValueError, match="amounts are integer satoshis"):
        payment_amount(amount, "x")


def test_node_amounts_convert_exactly_or_not_at_all() -> None:
    assert satoshis(Decimal("0.00150000"), "amount") == 150_000
    assert satoshis(Decimal("20999999.97690000"), "amount") == 2_099_999_997_690_000
    with pytest.raises(ValueError, match="not a whole number of satoshis"):
        satoshis(Decimal("0.000000001"), "amount")
    with pytest.raises(ValueError, match="expected a decimal amount"):
        satoshis(0.1, "amount")


def test_prepare_and_merge_keep_request_order() -> None:
    btc = offline_chain()
    a, b = (address_of(bytes([0, 20]) + bytes([n]) * 20, network("regtest")) for n in (1, 2))
    assert a is not None and b is not None
    first, second = btc.prepare(btc.pay(a, sats=10_000)), btc.prepare(btc.pay(b, sats=20_000))
    assert first == {"outputs": [[a, 10_000]]}
    merged = btc.merge([first, {**second, "feerate": 3000}, {**first, "feerate": 2000}])
    assert merged == {"outputs": [[a, 10_000], [b, 20_000], [a, 10_000]], "feerate": 3000}
    with pytest.raises(ValueError, match="only single payments can be batched"):
        btc.merge([merged])
    with pytest.raises(ValueError, match="tx must be btc.pay"):
        btc.prepare({"to": a, "value": 1})


def test_member_receipt_points_at_the_members_output() -> None:
    btc = offline_chain()
    receipt = BitcoinReceipt(tx_hash="ab" * 32, block_number=5, block_hash="cd" * 32, status=1, effective_fee=300,
                             position=1, output_index=0, vsize=200, feerate=1500,
                             outputs=[["x", 1000], ["y", 2000], ["change", 5000]])
    member = btc.member_receipt(receipt, 1)
    assert isinstance(member, BitcoinReceipt) and member.output_index == 1 and member.tx_hash == receipt.tx_hash
    with pytest.raises(ValueError, match="has no output 3"):
        btc.member_receipt(receipt, 3)
    # journaled and replayed as the same class
    assert Receipt.from_dict(member.to_dict()) == member


def test_vsize_matches_what_a_node_reports() -> None:
    p2wpkh = b"\x00\x14" + bytes(20)
    assert vsize(1, [p2wpkh, p2wpkh]) == 141  # litecoind's testmempoolaccept for our 1-in 2-out signed tx
    assert vsize(2, [p2wpkh, p2wpkh]) == 209
    assert fee_for(1000, 141) == 141 and fee_for(1001, 141) == 142


def test_node_fee_estimates_are_read_exactly() -> None:
    assert from_node({"feerate": Decimal("0.00012345"), "blocks": 6}) == 12_345
    assert from_node({"errors": ["Insufficient data or no feerate found"], "blocks": 0}) is None


async def test_estimate_falls_back_and_caps() -> None:
    btc = offline_chain(fallback_feerate=5_000, max_feerate=20_000)

    async def answer(method: str, *params: object, timeout: float | None = None) -> object:
        return answers[method]

    btc.rpc.call = answer  # type: ignore[method-assign]
    request = btc.prepare(btc.pay(btc.sender(), sats=10_000))
    for answers, rate in (({"estimatesmartfee": {"errors": ["no data"], "blocks": 0}}, 5_000),
                          ({"estimatesmartfee": {"feerate": Decimal("0.00003"), "blocks": 6}}, 3_000),
                          ({"estimatesmartfee": {"feerate": Decimal("0.001"), "blocks": 6}}, 20_000),
                          ({"estimatesmartfee": {"feerate": Decimal("0.000001"), "blocks": 6}}, 1_000)):
        assert (await btc.estimate(request))["feerate"] == rate


@given(feerate=st.integers(1000, 500_000), factor=st.floats(1.0, 3.0), size=st.integers(100, 10_000))
def test_a_bump_obeys_bip125(feerate: int, factor: float, size: int) -> None:
    """Same size, higher rate: the replacement pays more in total and per vbyte, by at
    least the incremental relay fee for its own size (rules 3, 4 and 6)."""
    cap = 1_000_000
    raised = bump(feerate, factor, incremental=1000, cap=cap)
    assert raised > feerate and raised >= min(cap, feerate * factor - 1)
    assert fee_for(raised, size) - fee_for(feerate, size) >= 1000 * size // 1000


def test_a_bump_stops_at_the_budget() -> None:
    assert bump(10_000, 1.5, incremental=1000, cap=12_000) == 12_000
    with pytest.raises(TxRejected, match="fee budget exhausted") as caught:
        bump(12_000, 1.5, incremental=1000, cap=12_000)
    assert caught.value.reverted is False
    with pytest.raises(TxRejected, match="fee budget exhausted"):
        bump(11_500, 1.5, incremental=1000, cap=12_000)  # room left, but less than a valid replacement
    btc = offline_chain(max_feerate=50_000)
    assert btc.bump_fees({"feerate": 10_000, "fee": 1410}, 1.125) == {"feerate": 11_250}
    assert btc.bump_fees({"feerate": 10_000, "fee": 1410}, 1.01) == {"feerate": 11_000}


async def test_signing_above_the_budget_is_refused_before_the_node_is_asked() -> None:
    btc = offline_chain(max_feerate=50_000)
    request = btc.prepare(btc.pay(btc.sender(), sats=10_000))
    with pytest.raises(TxRejected, match="exceeds the max_feerate 50000 sat/kvB of chain 'btc'"):
        await btc.sign(request, ["ab" * 32 + ":0"], {"feerate": 50_001})
    assert btc.rpc.calls == 0


def _coins(*values: int) -> list[Coin]:
    return [Coin(f"{n:064x}:{n % 3}", v) for n, v in enumerate(values, 1)]


def test_selection_is_deterministic_and_budgets_the_max_feerate() -> None:
    btc = offline_chain(max_feerate=100_000)
    request = btc.prepare(btc.pay(btc.sender(), sats=100_000))
    coins = _coins(60_000, 90_000, 60_000, 5_000)
    chosen = btc.select(request, coins)
    assert chosen == btc.select(request, list(reversed(coins)))
    # 100,000 + the fee at 100 sat/vB for 2 inputs and 2 outputs (209 vB) = 120,900
    assert [c.value for c in chosen] == [90_000, 60_000] and chosen[1].outpoint == coins[0].outpoint
    assert btc.select(btc.prepare(btc.pay(btc.sender(), sats=70_000)), coins) == [coins[1]]


def test_insufficient_funds_says_what_is_needed() -> None:
    btc = offline_chain(max_feerate=100_000)
    request = btc.prepare(btc.pay(btc.sender(), sats=200_000))
    with pytest.raises(TxRejected) as caught:
        btc.select(request, _coins(60_000, 90_000))
    assert str(caught.value) == ("insufficient funds: need 220900 sats (payments 200000 + fee budget 20900 at "
                                 "max_feerate 100000 sat/kvB), unreserved coins hold 150000")
    assert caught.value.reverted is False
    with pytest.raises(TxRejected, match="unreserved coins hold 0"):
        btc.select(request, [])


@pytest.mark.parametrize("code,message,outcome", [
    (-27, "Transaction already in block chain", BroadcastOutcome.ALREADY_KNOWN),
    (-26, "txn-already-in-mempool", BroadcastOutcome.ALREADY_KNOWN),
    (-26, "txn-already-known", BroadcastOutcome.ALREADY_KNOWN),
    (-25, "bad-txns-inputs-missingorspent", BroadcastOutcome.SPENT),
    (-25, "Missing inputs", BroadcastOutcome.SPENT),
    (-26, "insufficient fee, rejecting replacement ab; new feerate 0.0001 <= old feerate 0.00011",
     BroadcastOutcome.UNDERPRICED),
    (-26, "min relay fee not met, 100 < 141", BroadcastOutcome.UNDERPRICED),
    (-26, "mempool min fee not met, 141 < 2000", BroadcastOutcome.UNDERPRICED),
    (-26, "txn-mempool-conflict", BroadcastOutcome.REJECTED),  # a foreign spend no fee replaces
    (-26, "non-mandatory-script-verify-flag (Signature must be zero for failed CHECK(MULTI)SIG operation)",
     BroadcastOutcome.REJECTED),
    (-22, "TX decode failed", BroadcastOutcome.REJECTED),
    (-26, "dust", BroadcastOutcome.REJECTED),
])
def test_core_broadcast_answers_are_classified(code: int, message: str, outcome: BroadcastOutcome) -> None:
    assert classify(code, message) is outcome


def test_chain_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_feerate must be an int of at least 10000"):
        offline_chain(max_feerate=5_000)
    with pytest.raises(ValueError, match="lookahead must be an int of at least 1"):
        offline_chain(lookahead=0)
    with pytest.raises(Exception, match=r"unknown Bitcoin network 'bitcoin'; expected one of \['litecoin-regtest'"):
        offline_chain(net="bitcoin")


@pytest.mark.parametrize("setting", ["timeout", "scan_timeout"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0])
def test_a_timeout_that_is_no_positive_finite_number_is_refused(setting: str, value: float) -> None:
    from adapters.bitcoin import BitcoinChain, DescriptorWallet
    from tests.adapters._btc import master_key

    wallet = DescriptorWallet(master_key(b"seed", "regtest"))
    options: dict[str, Any] = {setting: value}
    with pytest.raises(ValueError, match=setting):
        BitcoinChain("b", rpc="http://u:p@127.0.0.1:18443", network="regtest", wallet=wallet, **options)
