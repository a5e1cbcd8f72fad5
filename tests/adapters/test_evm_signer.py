"""The private key never leaves LocalSigner: not in repr, str, errors, pickles or copies."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import traceback
from pathlib import Path

import pytest
from eth_account import Account

from adapters.evm import EvmChain, LocalSigner, Signer, SignerError, TxInvalid

KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY_HEX = KEY[2:]
ADDRESS = Account.from_key(KEY).address


def assert_no_key(text: str) -> None:
    assert KEY_HEX not in text.lower()
    assert KEY_HEX[:16] not in text.lower()


def full_text(exc: BaseException) -> str:
    """Everything an error tracker could render: message, chain, traceback."""
    return "".join(traceback.format_exception(exc)) + repr(exc.__context__) + repr(exc.__cause__)


def test_from_key_signs_and_shows_only_the_address() -> None:
    signer = LocalSigner.from_key(KEY)
    assert isinstance(signer, Signer)
    assert signer.address == ADDRESS
    assert repr(signer) == str(signer) == f"LocalSigner(address={ADDRESS})"
    assert f"{signer}" == str(signer) and f"{signer!r}" == repr(signer)
    assert not hasattr(signer, "__dict__")
    public_data = {n for n in dir(signer) if not n.startswith("_") and not callable(getattr(signer, n))}
    assert public_data == {"address"}
    tx = {"to": ADDRESS, "value": 1, "gas": 21_000, "nonce": 0, "chainId": 1,
          "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "type": 2, "data": "0x"}
    raw, tx_hash = signer.sign_transaction(tx)
    expected = Account.sign_transaction(tx, KEY)
    assert raw == bytes(expected.raw_transaction) and tx_hash == "0x" + bytes(expected.hash).hex()
    assert LocalSigner.from_key(bytes.fromhex(KEY_HEX)).address == ADDRESS


def test_logging_the_signer_or_adapter_shows_no_key(caplog: pytest.LogCaptureFixture) -> None:
    signer = LocalSigner.from_key(KEY)
    chain = EvmChain("x", "http://127.0.0.1:9", signer)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("using %s on %r / %s", signer, chain, vars(chain))
    assert ADDRESS in caplog.text
    assert_no_key(caplog.text)


@pytest.mark.parametrize("attempt", [pickle.dumps, copy.copy, copy.deepcopy, lambda s: s.__getstate__(),
                                     lambda s: s.__reduce__(), lambda s: s.__reduce_ex__(2)])
def test_pickling_and_copying_are_refused(attempt: object) -> None:
    signer = LocalSigner.from_key(KEY)
    with pytest.raises(TypeError, match="cannot be pickled") as err:
        attempt(signer)  # type: ignore[operator]
    assert_no_key(full_text(err.value))


def test_from_env_names_the_variable_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINTER_KEY", KEY)
    assert LocalSigner.from_env("MINTER_KEY").address == ADDRESS
    monkeypatch.setenv("MINTER_KEY", "  " + KEY + "\n")  # pasted with whitespace
    assert LocalSigner.from_env("MINTER_KEY").address == ADDRESS

    monkeypatch.delenv("MINTER_KEY")
    with pytest.raises(SignerError, match="'MINTER_KEY' is not set"):
        LocalSigner.from_env("MINTER_KEY")

    almost = KEY[:-1] + "z"  # one bad digit: the rest is a real secret
    monkeypatch.setenv("MINTER_KEY", almost)
    with pytest.raises(SignerError, match="'MINTER_KEY' does not hold a valid private key") as err:
        LocalSigner.from_env("MINTER_KEY")
    assert isinstance(err.value, ValueError)
    assert_no_key(full_text(err.value))
    assert err.value.__context__ is None and err.value.__cause__ is None
    assert all("value" not in frame.f_locals for frame, _ in traceback.walk_tb(err.value.__traceback__))


def test_from_key_error_does_not_echo_the_key() -> None:
    with pytest.raises(SignerError) as err:
        LocalSigner.from_key(KEY_HEX[:-2])  # 31 bytes
    assert_no_key(full_text(err.value))
    assert err.value.__context__ is None


def test_from_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "minter.json"
    path.write_text(json.dumps(Account.encrypt(bytes.fromhex(KEY_HEX), "correct horse", kdf="scrypt", iterations=2)))
    monkeypatch.setenv("KEYSTORE_PASSWORD", "correct horse")
    assert LocalSigner.from_keystore(path, password_env="KEYSTORE_PASSWORD").address == ADDRESS

    monkeypatch.setenv("KEYSTORE_PASSWORD", "wrong horse")
    with pytest.raises(SignerError, match="cannot decrypt keystore") as err:
        LocalSigner.from_keystore(path, password_env="KEYSTORE_PASSWORD")
    assert "KEYSTORE_PASSWORD" in str(err.value) and "wrong horse" not in full_text(err.value)
    assert_no_key(full_text(err.value))

    monkeypatch.delenv("KEYSTORE_PASSWORD")
    with pytest.raises(SignerError, match="'KEYSTORE_PASSWORD'.*not set"):
        LocalSigner.from_keystore(path, password_env="KEYSTORE_PASSWORD")
    monkeypatch.setenv("KEYSTORE_PASSWORD", "x")
    with pytest.raises(SignerError, match="cannot read keystore"):
        LocalSigner.from_keystore(tmp_path / "missing.json", password_env="KEYSTORE_PASSWORD")


def test_signing_failure_text_has_no_key() -> None:
    signer = LocalSigner.from_key(KEY)
    with pytest.raises(SignerError) as err:
        signer.sign_transaction({"to": "nonsense", "value": -1, "gas": 21_000, "nonce": 0, "chainId": 1,
                                 "gasPrice": 1})
    assert ADDRESS in str(err.value)
    assert_no_key(full_text(err.value))
    assert err.value.__context__ is None


async def test_adapter_turns_a_signer_refusal_into_tx_invalid() -> None:
    chain = EvmChain("x", "http://127.0.0.1:9", LocalSigner.from_key(KEY), chain_id=1)
    chain._chain_id = 1  # skip the node round trip: this test is about the signer
    request = {"to": ADDRESS, "value": 2**256 - 1, "data": "0x", "gas": 21_000}
    with pytest.raises(TxInvalid) as err:
        await chain.sign(request, 0, {"max_fee_per_gas": -1, "max_priority_fee_per_gas": 1})
    assert err.value.reverted is False
    assert_no_key(full_text(err.value))
    await chain.aclose()


@pytest.mark.parametrize("tx", [
    {"to": ADDRESS, "value": 1, "gas": 21_000, "nonce": 7, "chainId": 31337, "data": "0x",
     "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "type": 2},
    {"to": "0x5FbDB2315678afecb367f032d93F642f64180aa3", "value": 0, "gas": 90_000, "nonce": 2**40, "chainId": 1,
     "data": "0x40c10f19" + "00" * 64, "maxFeePerGas": 3 * 10**9, "maxPriorityFeePerGas": 0, "type": 2},
    {"to": ADDRESS, "value": 10**18, "gas": 21_000, "nonce": 0, "chainId": 1, "data": "0x", "gasPrice": 10**9},
    {"value": 0, "gas": 100_000, "nonce": 1, "chainId": 1, "data": "0x6000", "gasPrice": 1},  # contract creation
    {"from": ADDRESS, "to": ADDRESS, "value": 0, "gas": 21_000, "nonce": 3, "chainId": 1, "gasPrice": 5},
], ids=["eip1559", "eip1559-contract-call", "legacy", "legacy-create", "own-from"])
def test_fast_signing_matches_eth_account(tx: dict[str, object]) -> None:
    """LocalSigner signs with the key object it built once rather than through
    ``Account.sign_transaction`` (which re-derives the account per call): the bytes and
    hash must be exactly the public API's."""
    raw, tx_hash = LocalSigner.from_key(KEY).sign_transaction(dict(tx))
    expected = Account.sign_transaction(tx, KEY)
    assert raw == bytes(expected.raw_transaction)
    assert tx_hash == "0x" + bytes(expected.hash).hex()


@pytest.mark.parametrize("tx", [
    {"from": "0x" + "11" * 20, "to": ADDRESS, "value": 0, "gas": 21_000, "nonce": 0, "chainId": 1, "gasPrice": 1},
    {"to": ADDRESS.lower().replace("c", "C", 1), "value": 0, "gas": 21_000, "nonce": 0, "chainId": 1,
     "gasPrice": 1},  # mixed case with a wrong checksum
    {"to": "0x" + ADDRESS[2:].upper(), "value": 0, "gas": 21_000, "nonce": 0, "chainId": 1, "gasPrice": 1},
    {"to": ADDRESS.lower(), "value": 0, "gas": 21_000, "nonce": 0, "chainId": 1, "gasPrice": 1},
    {"to": ADDRESS, "value": 0, "gas": 21_000, "nonce": 0, "chainId": 1, "gasPrice": 1, "bogus": 1},
])
def test_fast_signing_refuses_what_eth_account_refuses(tx: dict[str, object]) -> None:
    with pytest.raises(Exception):  # noqa: B017 - eth-account's own error type
        Account.sign_transaction(tx, KEY)
    with pytest.raises(SignerError) as err:
        LocalSigner.from_key(KEY).sign_transaction(dict(tx))
    assert_no_key(full_text(err.value))
    assert err.value.__context__ is None
