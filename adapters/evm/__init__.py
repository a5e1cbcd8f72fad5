"""EVM chains through web3 + eth-account: ``EvmChain`` implements chainflow's
``ChainAdapter`` and ``NonceSource``; ``Signer`` is the seam for a KMS/HSM, ``LocalSigner`` the in-process key."""

from .chain import EvmChain, EvmReceipt
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
    "EvmReceipt",
    "LocalSigner",
    "RpcError",
    "RpcUnavailable",
    "Signer",
    "SignerError",
    "TxInvalid",
    "TxReverted",
]
