"""EVM chains through web3 + eth-account."""

from .chain import EvmChain
from .signer import LocalSigner, Signer

__all__ = ["EvmChain", "LocalSigner", "Signer"]
