"""Exceptions the EVM adapter raises on purpose.

The engine core never imports web3, so everything it must *recognise* derives from a
core type: a transaction that can never succeed is a ``chainflow.adapter.TxRejected``
(the core turns it into ``TxRevertedError`` / ``SubmissionFailedError`` naming the
step), a misconfigured chain is a ``chainflow.errors.ConfigurationError``.  Transport
and node errors are deliberately *not* ``ValueError``s: the core treats ``ValueError``
as "bad user input" and fails the step for good, whereas a timeout must be retried.
"""

from __future__ import annotations

from chainflow.chain.adapter import TxRejected
from chainflow.errors import ConfigurationError


class EvmAdapterError(Exception):
    """Base of the adapter's own (non-core) errors."""


class RpcError(EvmAdapterError):
    """The node answered a call with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str, data: object = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


class RpcUnavailable(EvmAdapterError, ConnectionError):
    """No usable answer (timeout, refused or dropped connection, unreadable body).

    A ``ConnectionError`` so generic retry code treats it as transient; the node may or
    may not have acted on the request.
    """

    def __init__(self, method: str, detail: str) -> None:
        super().__init__(f"{method}: {detail}")
        self.method = method
        self.detail = detail


class TxReverted(TxRejected):
    """The call reverts when estimated: it would burn gas for nothing if sent.

    ``data`` keeps the raw revert payload (0x-hex or None) for custom-error decoding by
    callers that know more ABIs than the adapter.
    """

    def __init__(self, reason: str, *, data: str | None = None) -> None:
        super().__init__(reason, reverted=True)
        self.data = data


class TxInvalid(TxRejected):
    """The node or the signer refuses the transaction for a reason other than a revert
    (insufficient funds at estimation, a field the signer cannot encode...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, reverted=False)


class ChainIdMismatch(ConfigurationError):
    """The node serves a different chain than the adapter was configured for: signing
    would produce transactions every node of the intended chain rejects."""

    def __init__(self, name: str, configured: int, actual: int, *, seen: bool = False) -> None:
        """``seen``: ``configured`` is the chain id the node reported before, none being
        configured (a node of another chain has replaced it behind the URL)."""
        expected = f"was served chain id {configured} by its node, which now" if seen else \
            f"is configured with chain id {configured} but its node"
        super().__init__(f"chain {name!r} {expected} reports {actual}")
        self.name = name
        self.configured = configured
        self.actual = actual


class SignerError(ValueError):
    """A signer could not be built (missing variable, bad key, wrong password).

    The message names the source (environment variable, keystore path), never the
    secret itself.
    """
