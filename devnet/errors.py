"""Exceptions shared by the devnet helpers."""

from __future__ import annotations

from typing import Any


class DevnetError(RuntimeError):
    """A devnet could not be started or driven."""


class RpcError(DevnetError):
    """A JSON-RPC error object, kept structured so callers can match on code/data."""

    def __init__(self, code: int, message: str, data: Any = None, *, method: str | None = None) -> None:
        super().__init__(f"{method}: [{code}] {message}" if method else f"[{code}] {message}")
        self.code = code
        self.message = message
        self.data = data
        self.method = method  # the call that failed, when raised by a client

    def to_json(self) -> dict[str, Any]:
        """Wire form of the error object (`data` omitted when absent, like geth)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            body["data"] = self.data
        return body


class AnvilNotInstalled(DevnetError):
    """The pinned anvil binary is missing; the message says how to install it."""


class RegtestNotInstalled(DevnetError):
    """No usable regtest node binary; the message says how to get one."""
