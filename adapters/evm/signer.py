"""Who signs: a narrow interface so a KMS or HSM can stand in for a local key.

A local key lives only inside the ``LocalSigner`` object: it has no public attribute,
its repr shows the address, it refuses pickling, and errors name the environment
variable or file, never the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from eth_account import Account
from eth_account.signers.local import LocalAccount


class Signer(Protocol):
    @property
    def address(self) -> str: ...

    def sign_transaction(self, tx: dict[str, Any]) -> tuple[bytes, str]:
        """Raw signed bytes and the 0x-prefixed lowercase hash."""


class LocalSigner:
    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @classmethod
    def from_key(cls, key: str | bytes) -> LocalSigner:
        try:
            return cls(Account.from_key(key))
        except Exception:
            raise ValueError("not a valid secp256k1 private key") from None

    @classmethod
    def from_env(cls, var: str) -> LocalSigner:
        value = os.environ.get(var)
        if not value:
            raise ValueError(f"environment variable {var!r} is not set (expected a hex private key)")
        try:
            return cls(Account.from_key(value.strip()))
        except Exception:
            raise ValueError(f"environment variable {var!r} does not hold a valid private key") from None

    @classmethod
    def from_keystore(cls, path: str | Path, *, password_env: str) -> LocalSigner:
        password = os.environ.get(password_env)
        if password is None:
            raise ValueError(f"environment variable {password_env!r} (keystore password) is not set")
        try:
            key = Account.decrypt(Path(path).read_text(), password)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot decrypt keystore {str(path)!r}: {type(exc).__name__}") from None
        return cls(Account.from_key(key))

    @property
    def address(self) -> str:
        return str(self._account.address)

    def sign_transaction(self, tx: dict[str, Any]) -> tuple[bytes, str]:
        signed = self._account.sign_transaction(tx)
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

    def __repr__(self) -> str:
        return f"LocalSigner(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("LocalSigner cannot be pickled: it holds a private key")
