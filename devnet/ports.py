"""Loopback port allocation for devnet servers."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """Ask the kernel for an unused 127.0.0.1 port.

    There is an unavoidable window between closing this probe socket and the
    node binding the port; callers retry start-up on bind failure instead of
    pretending the race does not exist.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
