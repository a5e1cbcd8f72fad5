"""Which network a chain is on, as data: address prefixes, key versions and relay policy.

The parameters live in ``networks.json`` (package data) rather than in code so a new
network is a data change, and so nothing depends on python-bitcoinlib's process-global
``SelectParams``: two chains on different networks can share one process.  A network is
also what an address or a key is checked against, and errors name the network the
foreign thing belongs to, which is why ``networks_where`` looks up by any field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from chainflow.errors import ConfigurationError


@dataclass(frozen=True)
class Network:
    """One network's parameters; fee rates in satoshi per 1000 virtual bytes (sat/kvB)."""

    name: str
    chain: str  # what the node's getblockchaininfo calls it
    genesis: str  # block 0's hash: what tells a node's network (Bitcoin or Litecoin regtest) for sure
    hrp: str  # bech32 human-readable part of segwit addresses
    p2pkh: int  # base58 version byte of pay-to-pubkey-hash addresses
    p2sh: int  # base58 version byte of pay-to-script-hash addresses
    wif: int  # version byte of WIF private keys
    xprv: bytes  # BIP32 version of extended private keys
    xpub: bytes  # BIP32 version of extended public keys
    coin_type: int  # BIP44 coin type of the default derivation path
    dust_relay_feerate: int  # -dustrelayfee: below the cost of spending it at this rate, an output is dust
    min_relay_feerate: int  # -minrelaytxfee: the lowest fee rate a node relays
    incremental_relay_feerate: int  # -incrementalrelayfee: what a replacement must add (BIP125)


@cache
def _all() -> dict[str, Network]:
    data: dict[str, Any] = json.loads(files(__package__).joinpath("networks.json").read_text(encoding="utf-8"))
    out = {}
    for name, p in data.items():
        if name.startswith("_"):
            continue
        out[name] = Network(name=name, chain=p["chain"], genesis=p["genesis"], hrp=p["hrp"], p2pkh=p["p2pkh"], p2sh=p["p2sh"],
                            wif=p["wif"], xprv=bytes.fromhex(p["xprv"]), xpub=bytes.fromhex(p["xpub"]),
                            coin_type=p["coin_type"], dust_relay_feerate=p["dust_relay_feerate"],
                            min_relay_feerate=p["min_relay_feerate"],
                            incremental_relay_feerate=p["incremental_relay_feerate"])
    return out


def network(name: str) -> Network:
    """The network called ``name``; a ``ConfigurationError`` listing the known ones else."""
    known = _all()
    if not isinstance(name, str) or name not in known:
        raise ConfigurationError(f"unknown Bitcoin network {name!r}; expected one of {sorted(known)}")
    return known[name]


def names() -> list[str]:
    return sorted(_all())


def networks_where(**field: object) -> str:
    """The names of the networks whose ``field`` has the value, for error messages:
    "mainnet", "testnet/signet", or "no known network"."""
    ((key, value),) = field.items()
    found = [n.name for n in _all().values() if getattr(n, key) == value]
    return "/".join(found) if found else "no known network"
