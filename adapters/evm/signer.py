"""Who signs: a narrow interface so a KMS or HSM can stand in for a local key.

A local key lives only inside a ``LocalSigner``: no public attribute holds it, repr and
str show the address, pickling and copying are refused, and every error names the
environment variable or keystore path, never the key or password.  Errors are raised
*outside* the ``except`` block that caught the library failure and after the secret is
dropped from the frame, so neither ``__context__`` nor a traceback's frame locals (which
error trackers capture) can carry it.  ``eth_keys``' own key object prints its hex in
its repr, which is why the account object is never handed out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

from eth_account import Account
from eth_account._utils.signing import sign_transaction_dict
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from .errors import SignerError
from .values import checksum

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


@runtime_checkable
class Signer(Protocol):
    """Anything that can sign for one address.

    ``sign_transaction`` gets an eth-account style dict (``to``, ``value``, ``data``,
    ``gas``, ``nonce``, ``chainId`` and ``maxFeePerGas``/``maxPriorityFeePerGas`` with
    ``type`` 2, or ``gasPrice``) and returns the raw signed bytes and the 0x-prefixed
    hash.  A remote signer may return an awaitable of that pair instead.
    """

    @property
    def address(self) -> str: ...

    def sign_transaction(self, tx: dict[str, Any]) -> tuple[bytes, str] | Awaitable[tuple[bytes, str]]: ...


class LocalSigner:
    """Signs in-process with eth-account (secp256k1 through coincurve when installed)."""

    __slots__ = ("_account", "_address")

    def __init__(self, account: LocalAccount) -> None:
        """Prefer the ``from_*`` constructors: they guarantee clean error messages."""
        if not isinstance(account, LocalAccount):
            raise TypeError("LocalSigner wraps an eth_account LocalAccount")
        self._account = account
        self._address = str(account.address)

    @classmethod
    def from_key(cls, key: str | bytes) -> LocalSigner:
        account = _account_or_none(key)
        del key
        if account is None:
            _fail("the given private key is not a valid secp256k1 key (expected 32 bytes or 64 hex digits)")
        return cls(account)

    @classmethod
    def from_env(cls, var: str) -> LocalSigner:
        value = os.environ.get(var)
        if value is None or not value.strip():
            del value
            _fail(f"environment variable {var!r} is not set (expected a hex private key)")
        account = _account_or_none(value.strip())
        del value
        if account is None:
            _fail(f"environment variable {var!r} does not hold a valid private key")
        return cls(account)

    @classmethod
    def from_keystore(cls, path: str | Path, *, password_env: str) -> LocalSigner:
        """An eth-account (Web3 Secret Storage) JSON keystore, password from ``password_env``."""
        problem: str | None = None
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            problem = f"cannot read keystore {str(path)!r}: {exc.strerror or type(exc).__name__}"
        if problem is not None:
            _fail(problem)
        password = os.environ.get(password_env)
        if password is None:
            _fail(f"environment variable {password_env!r} (keystore password) is not set")
        account = _decrypt_or_none(text, password)
        del password
        if account is None:
            _fail(f"cannot decrypt keystore {str(path)!r}: wrong password (from {password_env!r}) or not a keystore")
        return cls(account)

    @property
    def address(self) -> str:
        return self._address

    def sign_transaction(self, tx: dict[str, Any]) -> tuple[bytes, str]:
        """Raw signed bytes and the lowercase 0x hash.  A refusal is a ``SignerError``
        naming the problem in the transaction dict (which holds no secret)."""
        problem: str | None = None
        try:
            raw = _sign(self._account, tx)
        except Exception as exc:  # noqa: BLE001 - library errors carry key-holding frames
            problem = f"cannot sign transaction for {self._address}: {type(exc).__name__}: {exc}"
        if problem is not None:
            _fail(problem)
        return raw, "0x" + keccak(raw).hex()

    def __repr__(self) -> str:
        return f"LocalSigner(address={self._address})"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("LocalSigner cannot be pickled or copied: it holds a private key")

    def __reduce__(self) -> NoReturn:
        raise TypeError("LocalSigner cannot be pickled or copied: it holds a private key")

    def __getstate__(self) -> NoReturn:
        raise TypeError("LocalSigner cannot be pickled or copied: it holds a private key")

    def __copy__(self) -> NoReturn:
        raise TypeError("LocalSigner cannot be pickled or copied: it holds a private key")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        raise TypeError("LocalSigner cannot be pickled or copied: it holds a private key")


def _sign(account: LocalAccount, tx: Mapping[str, Any]) -> bytes:
    """``Account.sign_transaction``'s raw bytes, without what it costs per call around
    the signature: it rebuilds the account from the raw key (``from_key``: a public key
    derivation and a checksum), where this signs with the key object built once.  A
    checksummed ``to`` goes in as its 20 bytes, which eth-account encodes the same
    without checksumming it again (twice); checksum-validating it here is remembered.
    ``test_fast_signing_matches_eth_account`` pins the bytes to the public API's."""
    if not isinstance(tx, Mapping):
        raise TypeError(f"transaction_dict must be dict-like, got {tx!r}")
    fields = dict(tx)
    if "from" in fields:  # allowed only when it is this key's address, as eth-account does
        sender = fields.pop("from")
        if sender != account.address:
            shown = sender.decode() if isinstance(sender, bytes) else sender
            raise TypeError(f"from field must match key's {account.address}, but it was {shown}")
    to = fields.get("to")
    if isinstance(to, str) and _HEX_ADDRESS.fullmatch(to) and checksum(to) == to:
        fields["to"] = bytes.fromhex(to[2:])
    return bytes(sign_transaction_dict(account._key_obj, fields)[3])


def _account_or_none(key: Any) -> LocalAccount | None:
    try:
        return Account.from_key(key)
    except Exception:  # noqa: BLE001 - the message may quote the key: swallow it
        return None


def _decrypt_or_none(keystore: str, password: str) -> LocalAccount | None:
    try:
        return Account.from_key(Account.decrypt(keystore, password))
    except Exception:  # noqa: BLE001 - wrong password, bad JSON, unsupported KDF
        return None


def _fail(message: str) -> NoReturn:
    raise SignerError(message)
