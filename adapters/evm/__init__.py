"""EVM chains through web3 + eth-account: ``EvmChain`` implements chainflow's
``ChainAdapter``; ``Signer`` is the seam for a KMS/HSM, ``LocalSigner`` the in-process key."""

from .chain import EvmChain
from .errors import (
    ChainIdMismatch,
    EvmAdapterError,
    RpcError,
    RpcUnavailable,
    SignerError,
    TxInvalid,
    TxReverted,
)
from .signer import LocalSigner, Signer

__all__ = [
    "ChainIdMismatch",
    "EvmAdapterError",
    "EvmChain",
    "LocalSigner",
    "RpcError",
    "RpcUnavailable",
    "Signer",
    "SignerError",
    "TxInvalid",
    "TxReverted",
]
