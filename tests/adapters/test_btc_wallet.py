"""The Bitcoin wallet: derivation vectors, the forms keys come in, the network check,
key material kept out of every repr, pickle and error, and the transactions it signs
(BIP143 signature hashes, input and output order, change, fees)."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import coincurve
import pytest
from bitcoin.core import CMutableTransaction, CTransaction, b2lx, x

from adapters.bitcoin import DescriptorWallet, NodeMismatch, WalletError, network
from adapters.bitcoin.addresses import address_of
from adapters.bitcoin.transaction import RBF_SEQUENCE, Prevout, p2wpkh_digest, sign
from adapters.bitcoin.wallet import _descriptor_checksum
from chainflow.chain.adapter import TxRejected

from ._btc import BIP84_ADDRESSES, BIP84_ROOT, master_key, offline_chain, wif

MAINNET, REGTEST = network("mainnet"), network("regtest")


def test_bip84_vector_from_a_bare_master_key() -> None:
    keyring = DescriptorWallet(BIP84_ROOT).keyring(MAINNET, "btc", 3)
    assert keyring.addresses == BIP84_ADDRESSES


def test_a_descriptor_gives_the_same_keys_as_its_path() -> None:
    body = f"wpkh([73c5da0a/84h/0h/0h]{BIP84_ROOT}/84'/0h/0H/0/*)"
    for text in (body, f"{body}#{_descriptor_checksum(body)}"):
        assert DescriptorWallet(text).keyring(MAINNET, "btc", 3).addresses == BIP84_ADDRESSES
    single = DescriptorWallet(f"wpkh({BIP84_ROOT}/84h/0h/0h/0/1)").keyring(MAINNET, "btc", 20)
    assert single.addresses == BIP84_ADDRESSES[1:2]


def test_descriptor_checksums_are_bip380s() -> None:
    assert _descriptor_checksum("raw(deadbeef)") == "89f8spxm"  # Bitcoin Core's descriptor_tests vector
    body = f"wpkh({BIP84_ROOT}/84h/0h/0h/0/*)"
    checksum = _descriptor_checksum(body)
    wrong = checksum[:-1] + ("q" if checksum[-1] != "q" else "p")
    with pytest.raises(WalletError, match="#checksum does not match"):
        DescriptorWallet(f"{body}#{wrong}")


def test_wif_keys_in_order() -> None:
    secrets = [os.urandom(32) for _ in range(3)]
    keyring = DescriptorWallet(" ,\n".join(wif(s) for s in secrets)).keyring(REGTEST, "btc", 20)
    expected = [coincurve.PrivateKey(s).public_key.format(True) for s in secrets]
    assert keyring.pubkeys == expected and len(keyring.addresses) == 3
    assert all(a.startswith("bcrt1q") for a in keyring.addresses)


def test_the_key_must_belong_to_the_chains_network() -> None:
    with pytest.raises(NodeMismatch, match="is a mainnet extended key; chain 'btc' is on regtest"):
        DescriptorWallet(BIP84_ROOT).keyring(REGTEST, "btc", 1)
    with pytest.raises(NodeMismatch, match="is a testnet/signet/regtest/litecoin-regtest extended key; chain 'btc' "
                                           "is on mainnet"):
        DescriptorWallet(master_key(b"seed")).keyring(MAINNET, "btc", 1)
    with pytest.raises(NodeMismatch, match="include a mainnet key; chain 'btc' is on regtest"):
        DescriptorWallet(wif(os.urandom(32), "mainnet")).keyring(REGTEST, "btc", 1)


def test_keys_stay_out_of_reprs_pickles_and_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = master_key(b"redaction")
    monkeypatch.setenv("PAYOUT_XPRV", secret)
    wallet = DescriptorWallet.from_env("PAYOUT_XPRV")
    btc = offline_chain(seed=b"redaction")
    keyring = btc.keyring
    for thing in (wallet, keyring, btc):
        for text in (repr(thing), str(thing), f"{thing}"):
            assert secret not in text and secret[4:20] not in text and "secret-password" not in text
    assert repr(wallet) == "DescriptorWallet(tprv…/84h/<coin>h/0h/0/*, from environment variable 'PAYOUT_XPRV')"
    for thing in (wallet, keyring):
        for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match="cannot be pickled or copied"):
                attempt(thing)
    assert not any(isinstance(getattr(wallet, name, None), str) and secret in getattr(wallet, name)
                   for name in dir(wallet) if not name.startswith("__"))


def _mangle(text: str) -> str:
    """One character changed: the checksum no longer matches."""
    i = len(text) // 2
    return text[:i] + ("2" if text[i] != "2" else "3") + text[i + 1:]


@pytest.mark.parametrize("make", [
    lambda: _mangle(master_key(b"bad")),
    lambda: _mangle(wif(os.urandom(32))),
    lambda: master_key(b"bad")[:-5],
    lambda: "wpkh(" + _mangle(master_key(b"bad")) + "/0/*)",
    lambda: wif(os.urandom(32)) + " " + _mangle(wif(os.urandom(32))),
    lambda: "tpub" + master_key(b"bad")[4:],
])
def test_a_malformed_key_is_never_echoed(make: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = make()  # type: ignore[operator]
    monkeypatch.setenv("BAD_KEY", text)
    path = tmp_path / "key.txt"
    path.write_text(text)
    for build, source in ((lambda: DescriptorWallet(text), "the given key"),
                          (lambda: DescriptorWallet.from_env("BAD_KEY"), "environment variable 'BAD_KEY'"),
                          (lambda: DescriptorWallet.from_file(path), f"file {str(path)!r}")):
        with pytest.raises(WalletError) as caught:
            build()
        message = str(caught.value)
        assert source in message
        for word in text.split():
            assert word[5:25] not in message
        assert caught.value.__context__ is None and caught.value.__cause__ is None
        # error trackers capture frame locals: none of the adapter's frames holds the text
        tb = caught.value.__traceback__
        while tb is not None:
            if "adapters/bitcoin" in tb.tb_frame.f_code.co_filename:
                for value in tb.tb_frame.f_locals.values():
                    assert not any(word in repr(value) for word in text.split()), tb.tb_frame.f_code.co_name
            tb = tb.tb_next


def test_where_a_key_is_missing_is_said(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(WalletError, match="environment variable 'NO_SUCH_KEY' is not set"):
        DescriptorWallet.from_env("NO_SUCH_KEY")
    with pytest.raises(WalletError, match="cannot read wallet file"):
        DescriptorWallet.from_file(tmp_path / "missing")
    with pytest.raises(WalletError, match="holds an extended public key, which cannot sign"):
        DescriptorWallet("tpubD6NzVbkrYhZ4XgiXtGrdW5XDAPFCL9h7we1vwNCpn8tGbBcgfVYjXyhWo4E1xkh56hjod1RhGjxbaTLV3X4FyWuej"
                         "ifB9jusQ46QzG87VKp")


def test_bip143_signature_hash_vector() -> None:
    """BIP143's native P2WPKH example: the digest of its second input."""
    unsigned = CMutableTransaction.from_tx(CTransaction.deserialize(x(
        "0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffffffef51e1b804cc89d1"
        "82d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99"
        "f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac11000000")))
    pubkey = bytes.fromhex("025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357")
    digest = p2wpkh_digest(unsigned, 1, 600_000_000, pubkey)
    assert digest.hex() == "c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670"


def _funded(keyring: object, *values: int) -> list[Prevout]:
    return [Prevout(f"{os.urandom(32).hex()}:{n}", v, keyring.scripts[n % 2])  # type: ignore[attr-defined]
            for n, v in enumerate(values)]


def test_a_signed_payment_spends_every_input_in_order_and_verifies() -> None:
    btc = offline_chain(lookahead=2)
    keyring = btc.keyring
    inputs = _funded(keyring, 70_000, 50_000, 40_000)
    payee = address_of(b"\x00\x14" + bytes(range(20)), REGTEST)
    assert payee is not None
    payments = btc._payments(btc.merge([btc.prepare(btc.pay(payee, sats=100_000)),
                                        btc.prepare(btc.pay(btc.sender(), sats=30_000))]))
    signed = sign(keyring, REGTEST, inputs, payments, 2_000)
    tx = CTransaction.deserialize(signed.raw)
    assert signed.tx_hash == b2lx(tx.GetTxid())
    ordered = sorted(inputs, key=lambda p: (p.outpoint.split(":")[0], int(p.outpoint.split(":")[1])))
    assert [f"{b2lx(i.prevout.hash)}:{i.prevout.n}" for i in tx.vin] == [p.outpoint for p in ordered]
    assert all(i.nSequence == RBF_SEQUENCE for i in tx.vin) and tx.nVersion == 2
    # payments in order, then change to the primary address
    fee = signed.fees["fee"]
    assert [(bytes(o.scriptPubKey), o.nValue) for o in tx.vout] == payments + [
        (keyring.scripts[0], 160_000 - 130_000 - fee)]
    assert signed.fees == {"feerate": 2_000, "fee": fee} and fee == 2 * 308  # 3 inputs of 68 vB, 3 outputs of 31, 10.5 of overhead
    assert tx.calc_weight() <= 308 * 4  # the real size is at most the one priced
    mutable = CMutableTransaction.from_tx(tx)
    for i, prev in enumerate(ordered):
        signature, pubkey = list(tx.wit.vtxinwit[i].scriptWitness.stack)
        assert signature[-1] == 1  # SIGHASH_ALL
        index = keyring.index_of(prev.script)
        assert index is not None
        assert pubkey == keyring.pubkeys[index]
        digest = p2wpkh_digest(mutable, i, prev.value, pubkey)
        assert coincurve.PublicKey(pubkey).verify(signature[:-1], digest, hasher=None)
    # deterministic: the same request, inputs and fee rate sign the same bytes
    assert sign(keyring, REGTEST, list(reversed(inputs)), payments, 2_000).raw == signed.raw


def test_change_below_dust_goes_to_the_fee() -> None:
    btc = offline_chain()
    inputs = _funded(btc.keyring, 100_000)
    payments = [(btc.keyring.scripts[0], 99_700)]  # change of 159 < 294 dust
    signed = sign(btc.keyring, REGTEST, inputs, payments, 1_000)
    tx = CTransaction.deserialize(signed.raw)
    assert len(tx.vout) == 1 and signed.fees["fee"] == 300
    with pytest.raises(TxRejected, match="cannot pay 99900 plus a fee of 110") as caught:
        sign(btc.keyring, REGTEST, inputs, [(btc.keyring.scripts[0], 99_900)], 1_000)
    assert caught.value.reverted is False


def test_an_input_the_wallet_cannot_spend_is_refused() -> None:
    btc = offline_chain()
    foreign = [Prevout(f"{'ab' * 32}:0", 100_000, b"\x00\x14" + bytes(20))]
    with pytest.raises(TxRejected, match="does not pay one of the wallet's addresses"):
        sign(btc.keyring, REGTEST, foreign, [(btc.keyring.scripts[0], 50_000)], 1_000)
