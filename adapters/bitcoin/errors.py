"""Exceptions the Bitcoin adapter raises on purpose.

As in the EVM adapter, what the engine must recognise derives from a core type: a
payment that can never be made is a ``TxRejected``, a misconfigured chain a
``ConfigurationError``, bad user input a ``ValueError`` (the engine fails the step for
good), and a node that did not answer a ``ConnectionError`` (the engine retries).
"""

from __future__ import annotations

from chainflow.errors import ConfigurationError


class BitcoinAdapterError(Exception):
    """Base of the adapter's own (non-core) errors."""


class RpcError(BitcoinAdapterError):
    """The node answered a call with a JSON-RPC error object: its code and message kept
    as Bitcoin Core wrote them (the broadcast classification reads both)."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


class RpcUnavailable(BitcoinAdapterError, ConnectionError):
    """No usable answer (timeout, refused or dropped connection, unreadable body, a 5xx
    without a JSON-RPC error): the node may or may not have acted on the request."""

    def __init__(self, method: str, detail: str) -> None:
        super().__init__(f"{method}: {detail}")
        self.method = method
        self.detail = detail


class AddressError(ValueError):
    """An address that is malformed or belongs to another network; the message names
    the address and both networks."""


class WalletError(ValueError):
    """A wallet could not be built.  The message names the source (environment
    variable, file) and what is wrong, never the key material."""


class NodeMismatch(ConfigurationError):
    """The node serves another network than the chain is configured for, or lacks what
    the adapter needs (``-txindex``)."""
