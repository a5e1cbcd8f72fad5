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
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .errors import SignerError


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
            signed = self._account.sign_transaction(tx)
        except Exception as exc:  # noqa: BLE001 - library errors carry key-holding frames
            problem = f"cannot sign transaction for {self._address}: {type(exc).__name__}: {exc}"
        if problem is not None:
            _fail(problem)
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

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
