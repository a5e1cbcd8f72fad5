"""Bitcoin (and Bitcoin Core forks) through a node's JSON-RPC: ``BitcoinChain``
implements chainflow's ``ChainAdapter`` and ``CoinSource``; ``DescriptorWallet`` holds
the keys it signs with, which never leave the process."""

from .chain import BitcoinChain, BitcoinReceipt
from .errors import AddressError, BitcoinAdapterError, NodeMismatch, RpcError, RpcUnavailable, WalletError
from .networks import Network, network, names
from .wallet import DescriptorWallet, master_key

__all__ = [
    "AddressError",
    "BitcoinAdapterError",
    "BitcoinChain",
    "BitcoinReceipt",
    "DescriptorWallet",
    "Network",
    "NodeMismatch",
    "RpcError",
    "RpcUnavailable",
    "WalletError",
    "master_key",
    "names",
    "network",
]
