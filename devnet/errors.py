"""Exceptions shared by the devnet helpers."""

from __future__ import annotations

from typing import Any


class DevnetError(RuntimeError):
    """A devnet could not be started or driven."""


class RpcError(DevnetError):
    """A JSON-RPC error object, kept structured so callers can match on code/data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        """Wire form of the error object (`data` omitted when absent, like geth)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            body["data"] = self.data
        return body


class AnvilNotInstalled(DevnetError):
    """The pinned anvil binary is missing; the message says how to install it."""
