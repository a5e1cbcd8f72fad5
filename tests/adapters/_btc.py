"""Keys and chains for the Bitcoin adapter's tests: made from seeds, so nothing secret
is checked in, and every test gets keys of the network it needs."""

from __future__ import annotations

from adapters.bitcoin import BitcoinChain, DescriptorWallet
from adapters.bitcoin import master_key as wallet_master_key
from adapters.bitcoin.encoding import b58check_encode
from adapters.bitcoin.networks import network

# BIP32 test vector: the master key of BIP84's "abandon … about" mnemonic
BIP84_ROOT = ("xprv9s21ZrQH143K3GJpoapnV8SFfukcVBSfeCficPSGfubmSFDxo1kuHnLisriDvSnRRuL2Qrg5ggqHKNVpxR86QEC8w35uxmGog"
              "gxtQTPvfUu")
BIP84_ADDRESSES = ["bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g",
                   "bc1qp59yckz4ae5c4efgw2s5wfyvrz0ala7rgvuz8z"]


def master_key(seed: bytes, net: str = "regtest") -> str:
    """The BIP32 master extended private key of ``seed`` for ``net``."""
    return wallet_master_key(seed, net)


def wif(secret: bytes, net: str = "regtest") -> str:
    """A compressed-key WIF string of a 32-byte secret."""
    return b58check_encode(bytes([network(net).wif]) + secret + b"\x01")


def offline_chain(net: str = "regtest", seed: bytes = b"chainflow offline", **options: object) -> BitcoinChain:
    """A chain whose node is never called (nothing listens at the URL)."""
    return BitcoinChain("btc", rpc="http://user:secret-password@127.0.0.1:9", network=net,
                        wallet=DescriptorWallet(master_key(seed, net)), **options)  # type: ignore[arg-type]
