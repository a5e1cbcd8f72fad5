"""Base58Check and the hashes behind addresses and keys.

Addresses, WIF keys and BIP32 extended keys all carry a 4-byte double-SHA256
checksum under base58; decoding checks it here once, so a mistyped character is
reported as such wherever it occurs.  Errors say what is wrong with the text but
never repeat it: the same decoder reads private keys.
"""

from __future__ import annotations

import hashlib

from bitcoin import base58
from bitcoin.core.serialize import Hash160


class Base58CheckError(ValueError):
    """Not base58, or the checksum does not match."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def hash160(data: bytes) -> bytes:
    """RIPEMD160(SHA256(data)): python-bitcoinlib's pure-Python RIPEMD160, since
    OpenSSL 3 builds may not offer it through hashlib."""
    return bytes(Hash160(data))


def b58check_decode(text: str) -> bytes:
    """The payload (version bytes included) of a Base58Check string."""
    try:
        raw = base58.decode(text)
    except base58.Base58Error:
        raise Base58CheckError("it holds characters outside the base58 alphabet") from None
    if len(raw) < 5:
        raise Base58CheckError("it is too short for a base58 checksum")
    payload, check = raw[:-4], raw[-4:]
    if sha256d(payload)[:4] != check:
        raise Base58CheckError("its base58 checksum does not match (a mistyped character?)")
    return payload


def b58check_encode(payload: bytes) -> str:
    return str(base58.encode(payload + sha256d(payload)[:4]))
