"""Addresses of one network to output scripts and back, and the dust limit of an output.

A payment names its payee by address; what goes into the transaction is the output
script the address encodes.  The address is checked against the chain's own network
(its bech32 prefix or base58 version byte), because an address of another network
decodes to a perfectly valid script that no one on this network can spend: the error
names both networks.  Witness v0 addresses use bech32, v1 (taproot) and later bech32m
(BIP350); only the versions a node relays as standard payees are accepted.
"""

from __future__ import annotations

from bech32m import DecodeError
from bech32m import decode as segwit_decode
from bech32m import encode as segwit_encode

from .encoding import Base58CheckError, b58check_decode, b58check_encode
from .errors import AddressError
from .networks import Network, networks_where

_OP_0, _OP_1 = 0x00, 0x51
_OP_DUP, _OP_HASH160, _OP_EQUALVERIFY, _OP_CHECKSIG, _OP_EQUAL = 0x76, 0xA9, 0x88, 0xAC, 0x87

# witness version -> the program lengths a node relays as a standard output
_STANDARD_PROGRAMS = {0: (20, 32), 1: (32,)}


def p2wpkh_script(pubkey_hash: bytes) -> bytes:
    return bytes([_OP_0, 20]) + pubkey_hash


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    return bytes([_OP_DUP, _OP_HASH160, 20]) + pubkey_hash + bytes([_OP_EQUALVERIFY, _OP_CHECKSIG])


def _witness_program(script: bytes) -> tuple[int, bytes] | None:
    """(version, program) of a witness output script (BIP141's definition)."""
    if not 4 <= len(script) <= 42 or script[1] != len(script) - 2:
        return None
    if script[0] == _OP_0:
        return 0, script[2:]
    if _OP_1 <= script[0] <= _OP_1 + 15:
        return script[0] - _OP_1 + 1, script[2:]
    return None


def script_for(address: str, network: Network, chain: str) -> bytes:
    """The output script paying ``address``; ``AddressError`` naming the address and
    the networks when it is malformed or not of ``network`` (``chain`` is the chain's
    name, for the message)."""
    if not isinstance(address, str) or not address:
        raise AddressError(f"an address must be a non-empty string, got {address!r}")
    where = f"chain {chain!r} is on {network.name}"
    hrp, sep, _ = address.lower().rpartition("1")
    if sep and hrp and networks_where(hrp=hrp) != "no known network":
        return _segwit_script(address, hrp, network, where)
    try:
        payload = b58check_decode(address)
    except Base58CheckError as exc:
        raise AddressError(f"{address!r} is not a valid address for {network.name} (expected a bech32 address "
                           f"starting with {network.hrp}1 or a base58 one): {exc}") from None
    if len(payload) != 21:
        raise AddressError(f"{address!r} is not an address: base58 payload of {len(payload)} bytes, expected 21")
    version, body = payload[0], payload[1:]
    if version == network.p2pkh:
        return p2pkh_script(body)
    if version == network.p2sh:
        return bytes([_OP_HASH160, 20]) + body + bytes([_OP_EQUAL])
    owners = sorted({networks_where(p2pkh=version), networks_where(p2sh=version)} - {"no known network"})
    owner = " or ".join(owners) if owners else f"no known network's (version byte {version})"
    raise AddressError(f"{address!r} is a {owner} address; {where}")


def _segwit_script(address: str, hrp: str, network: Network, where: str) -> bytes:
    try:
        version, program = segwit_decode(hrp, address)
    except DecodeError:
        raise AddressError(f"{address!r} is not a valid segwit address: its bech32/bech32m checksum or encoding "
                           f"is wrong (a mistyped character?)") from None
    if hrp != network.hrp:
        raise AddressError(f"{address!r} is a {networks_where(hrp=hrp)} address; {where}")
    if len(program) not in _STANDARD_PROGRAMS.get(version, ()):
        raise AddressError(f"{address!r} is a witness version {version} address with a {len(program)}-byte "
                           f"program, which nodes do not relay as a standard payee")
    return bytes([_OP_0 if version == 0 else _OP_1 + version - 1, len(program)]) + bytes(program)


def address_of(script: bytes, network: Network) -> str | None:
    """The address of an output script on ``network``; None for scripts without one."""
    witness = _witness_program(script)
    if witness is not None:
        try:
            return segwit_encode(network.hrp, witness[0], witness[1])
        except DecodeError:
            return None
    if len(script) == 25 and script[:3] == bytes([_OP_DUP, _OP_HASH160, 20]) and script[23:] == bytes(
            [_OP_EQUALVERIFY, _OP_CHECKSIG]):
        return b58check_encode(bytes([network.p2pkh]) + script[3:23])
    if len(script) == 23 and script[:2] == bytes([_OP_HASH160, 20]) and script[22] == _OP_EQUAL:
        return b58check_encode(bytes([network.p2sh]) + script[2:22])
    return None


def dust_limit(script: bytes, network: Network) -> int:
    """The smallest value an output paying ``script`` may carry and still be relayed:
    Bitcoin Core's ``GetDustThreshold`` (the output plus the input that will spend it,
    priced at the network's dust relay fee rate; a witness input's signature is
    discounted to a quarter)."""
    output_size = 8 + _compact_size_len(len(script)) + len(script)
    spend_size = 32 + 4 + 1 + (107 // 4 if _witness_program(script) is not None else 107) + 4
    return network.dust_relay_feerate * (output_size + spend_size) // 1000


def _compact_size_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9
