"""The keys a chain pays from: a BIP32 extended key (optionally as a ``wpkh()``
descriptor) or a list of WIF keys, spending P2WPKH outputs.

Key material lives only inside a ``DescriptorWallet`` (what the user gives) and the
``Keyring`` a chain derives from it for its network: no public attribute holds it,
repr and str show the key's kind and where it came from, pickling and copying are
refused, and errors name the source (environment variable, file), never the text.
As in the EVM signer, errors are raised outside the ``except`` that caught a library
failure, so no ``__context__`` or frame of the traceback carries the secret.  Nothing
here is ever written to the database: the engine journals the signed bytes only.

Derivation (BIP32) and signing go through coincurve (libsecp256k1: RFC 6979 nonces, so
the same digest always gives the same signature, low-S as relay policy demands).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import coincurve

from .addresses import address_of, p2wpkh_script
from .encoding import Base58CheckError, b58check_decode, b58check_encode, hash160
from .errors import NodeMismatch, WalletError
from .networks import Network, network as network_named, networks_where

HARDENED = 0x80000000

# BIP380 descriptor checksums
_DESC_CHARSET = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_DESC_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)

_DESCRIPTOR = re.compile(r"^wpkh\((?:\[[0-9a-fA-F]{8}(?:/[0-9]+['hH]?)*\])?([1-9A-HJ-NP-Za-km-z]+)((?:/[0-9]+['hH]?)*)(/\*)?\)$")


class _Secret:
    """Keeps whatever derives from it out of reprs, pickles and copies."""

    __slots__ = ()

    def _describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied: it holds private keys")

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied: it holds private keys")

    def __getstate__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied: it holds private keys")

    def __copy__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied: it holds private keys")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied: it holds private keys")


@dataclass(frozen=True, repr=False)
class _ExtendedKey:
    version: bytes
    chain_code: bytes
    key: coincurve.PrivateKey

    def __repr__(self) -> str:
        return "_ExtendedKey(…)"

    def child(self, index: int) -> _ExtendedKey:
        """BIP32 CKDpriv."""
        data = (b"\x00" + self.key.secret if index >= HARDENED else self.key.public_key.format(True))
        digest = hmac.new(self.chain_code, data + index.to_bytes(4, "big"), hashlib.sha512).digest()
        # tweak-add refuses IL >= n and a zero result: BIP32 says skip to the next
        # index, which has probability below 2^-127; failing loudly is just as good
        return _ExtendedKey(self.version, digest[32:], self.key.add(digest[:32]))


class DescriptorWallet(_Secret):
    """The user's keys, not yet tied to a network.

    Give one of: an extended private key (``xprv…``/``tprv…``: addresses derive along
    BIP84's ``m/84h/<coin>h/0h/0/*``, coin 0 on mainnet and 1 elsewhere), a descriptor
    ``wpkh(tprv…/84h/1h/0h/0/*)`` (key-origin prefix and ``#checksum`` allowed; without
    the ``/*`` it is one key), or WIF keys separated by spaces, commas or newlines
    (index 0 is the first one).
    """

    __slots__ = ("_root", "_path", "_ranged", "_wifs", "_source", "_kind")

    def __init__(self, secret: str, *, source: str = "the given key") -> None:
        """Prefer ``from_env`` / ``from_file``: the secret then never sits in your code."""
        self._source, self._kind = source, "no key"
        self._root: _ExtendedKey | None = None
        self._path: tuple[int, ...] | None = None  # None: BIP84's default, set per network
        self._ranged = True
        self._wifs: tuple[tuple[int, coincurve.PrivateKey], ...] = ()
        problem = self._load(secret) if isinstance(secret, str) else f"{source} must be a string"
        del secret
        if problem is not None:
            _fail(problem)

    @classmethod
    def from_env(cls, var: str) -> DescriptorWallet:
        value = os.environ.get(var)
        if value is None or not value.strip():
            del value
            _fail(f"environment variable {var!r} is not set (expected an xprv/tprv, a wpkh() descriptor or WIF keys)")
        wallet, problem = cls._attempt(value, f"environment variable {var!r}")
        del value
        return wallet if problem is None else _fail(problem)

    @classmethod
    def from_file(cls, path: str | Path) -> DescriptorWallet:
        problem: str | None = None
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"cannot read wallet file {str(path)!r}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
        if problem is not None:
            _fail(problem)
        wallet, problem = cls._attempt(text, f"file {str(path)!r}")
        del text
        return wallet if problem is None else _fail(problem)

    @classmethod
    def _attempt(cls, secret: str, source: str) -> tuple[Any, str | None]:
        """(the wallet, None) or (None, its error): the caller drops its copy of the
        secret before raising, so no frame of the traceback holds it."""
        try:
            return cls(secret, source=source), None
        except WalletError as exc:
            return None, str(exc)

    def _describe(self) -> str:
        return f"{self._kind}, from {self._source}"

    def _load(self, secret: str) -> str | None:
        """Parse ``secret`` into this wallet; the problem (without the secret) or None."""
        text = secret.strip()
        if text.startswith("wpkh("):
            return self._load_descriptor(text)
        words = [w for w in re.split(r"[\s,]+", text) if w]
        if not words:
            return f"{self._source} is empty"
        if words[0][:4] in ("xprv", "tprv", "xpub", "tpub"):
            if len(words) > 1:
                return f"{self._source} holds more than one extended key"
            self._kind = f"{text[:4]}…/84h/<coin>h/0h/0/*"
            return self._load_extended(text)
        keys = []
        for n, word in enumerate(words):
            key = _wif_or_none(word)
            if key is None:
                return (f"{self._source}: key {n + 1} of {len(words)} is neither a compressed WIF private key, an "
                        f"extended private key (xprv/tprv) nor a wpkh() descriptor")
            keys.append(key)
        self._wifs = tuple(keys)
        self._kind = f"{len(keys)} WIF key{'s' if len(keys) != 1 else ''}"
        return None

    def _load_descriptor(self, text: str) -> str | None:
        body, _, checksum = text.partition("#")
        if checksum and _descriptor_checksum(body) != checksum:
            return f"{self._source}: the descriptor's #checksum does not match (a mistyped character?)"
        match = _DESCRIPTOR.match(body)
        if match is None:
            return (f"{self._source}: unsupported descriptor; expected wpkh(<xprv or tprv>/<path>/*) with an "
                    f"optional [fingerprint/origin] prefix (a wildcard may not be hardened)")
        key, path, ranged = match.groups()
        steps = [(int(s.rstrip("'hH")), s[-1] in "'hH") for s in path.split("/") if s]
        if any(number >= HARDENED for number, _ in steps):
            return f"{self._source}: a derivation step of the descriptor is out of range"
        self._path = tuple(number + (HARDENED if hardened else 0) for number, hardened in steps)
        self._ranged = bool(ranged)
        self._kind = f"wpkh({key[:4]}…{path}{ranged or ''})"
        return self._load_extended(key)

    def _load_extended(self, text: str) -> str | None:
        try:
            payload = b58check_decode(text)
        except Base58CheckError as exc:
            return f"{self._source}: the extended key is not valid: {exc}"
        if len(payload) != 78:
            return f"{self._source}: the extended key is {len(payload)} bytes, expected 78"
        version = payload[:4]
        if networks_where(xpub=version) != "no known network":
            return (f"{self._source} holds an extended public key, which cannot sign; give the extended private "
                    f"key (xprv/tprv)")
        if networks_where(xprv=version) == "no known network" or payload[45] != 0:
            return f"{self._source}: not an extended private key of a known network"
        key = _private_key_or_none(payload[46:])
        if key is None:
            return f"{self._source}: the extended key's private key is out of range"
        self._root = _ExtendedKey(version, payload[13:45], key)
        return None

    def keyring(self, network: Network, chain: str, lookahead: int) -> Keyring:
        """The first ``lookahead`` keys on ``network`` (every WIF key, for a list; the
        one key of a descriptor without ``/*``); ``NodeMismatch`` when the key belongs
        to another network."""
        where = f"chain {chain!r} is on {network.name}"
        if self._root is not None:
            if self._root.version != network.xprv:
                raise NodeMismatch(f"the wallet's key ({self._source}) is a {networks_where(xprv=self._root.version)} "
                                   f"extended key; {where}")
            path = self._path if self._path is not None else (
                84 + HARDENED, network.coin_type + HARDENED, HARDENED, 0)
            branch = _derive(self._root, path)
            keys = [branch.child(i).key for i in range(lookahead)] if self._ranged else [branch.key]
        else:
            for version, _ in self._wifs:
                if version != network.wif:
                    raise NodeMismatch(f"the wallet's WIF keys ({self._source}) include a "
                                       f"{networks_where(wif=version)} key; {where}")
            keys = [key for _, key in self._wifs]
        return Keyring(network, keys, self._describe())


def master_key(seed: bytes, network: str) -> str:
    """The BIP32 master extended private key (``tprv…`` off mainnet) of ``seed`` on
    ``network``: how a devnet, test or benchmark wallet is made reproducibly from a
    fixed seed, with no key checked in.  A fixed seed is public: never fund such a key
    on a real network."""
    if not isinstance(seed, bytes):
        raise TypeError(f"a BIP32 seed is bytes, not {type(seed).__name__}")
    digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
    return b58check_encode(network_named(network).xprv + b"\0" * 9 + digest[32:] + b"\0" + digest[:32])


def _derive(key: _ExtendedKey, path: tuple[int, ...]) -> _ExtendedKey:
    for index in path:
        key = key.child(index)
    return key


class Keyring(_Secret):
    """A wallet's keys on one network: addresses and output scripts by index, and
    signatures.  Index 0 is the wallet's primary address (sender and change)."""

    __slots__ = ("_keys", "_what", "pubkeys", "scripts", "addresses", "_index")

    def __init__(self, network: Network, keys: list[coincurve.PrivateKey], what: str) -> None:
        self._keys = tuple(keys)
        self._what = what
        self.pubkeys = [k.public_key.format(True) for k in keys]
        self.scripts = [p2wpkh_script(hash160(p)) for p in self.pubkeys]
        self.addresses = [str(address_of(s, network)) for s in self.scripts]
        self._index = {s: i for i, s in enumerate(self.scripts)}

    def _describe(self) -> str:
        return f"{self._what}: {len(self._keys)} key(s), primary {self.addresses[0]}"

    def index_of(self, script: bytes) -> int | None:
        """Which key an output script pays, or None when it is not the wallet's."""
        return self._index.get(bytes(script))

    def sign(self, index: int, digest: bytes) -> bytes:
        """A DER signature of a 32-byte sighash with key ``index`` (no hash type byte)."""
        return bytes(self._keys[index].sign(digest, hasher=None))


def _wif_or_none(text: str) -> tuple[int, coincurve.PrivateKey] | None:
    """(version byte, key) of a compressed-key WIF string: segwit needs compressed keys."""
    try:
        payload = b58check_decode(text)
    except Base58CheckError:
        return None
    if len(payload) != 34 or payload[33] != 1 or networks_where(wif=payload[0]) == "no known network":
        return None
    key = _private_key_or_none(payload[1:33])
    return None if key is None else (payload[0], key)


def _private_key_or_none(secret: bytes) -> coincurve.PrivateKey | None:
    try:
        return coincurve.PrivateKey(secret)
    except Exception:  # noqa: BLE001 - zero or above the group order; the message may quote it
        return None


def _descriptor_checksum(body: str) -> str:
    """BIP380's checksum of a descriptor (the 8 characters after '#')."""
    symbols: list[int] = []
    groups: list[int] = []
    for ch in body:
        value = _DESC_CHARSET.find(ch)
        if value < 0:
            return ""
        symbols.append(value & 31)
        groups.append(value >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    check = 1
    for value in symbols + [0] * 8:
        top = check >> 35
        check = (check & 0x7FFFFFFFF) << 5 ^ value
        for i, generator in enumerate(_DESC_GENERATOR):
            check ^= generator if (top >> i) & 1 else 0
    check ^= 1
    return "".join(_CHECKSUM_CHARSET[(check >> (5 * (7 - i))) & 31] for i in range(8))


def _fail(message: str) -> NoReturn:
    raise WalletError(message)
