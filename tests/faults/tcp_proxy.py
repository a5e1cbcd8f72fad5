"""A loopback TCP proxy that lets a test decide, chunk by chunk, what gets through.

Generic on purpose: it knows nothing of the protocol it carries.  A *policy* is
called with every chunk read from either side, in the order they arrived (one thread
per connection, so it can keep parsing state in ``link.state``), and returns the bytes to pass on, which may be
fewer (held back for later, or dropped), or ``None`` to cut the connection: both
sockets are closed at once and whatever the policy held back is lost.  Postgres reply
dropping (``pg_wire``) and lying/hanging RPC nodes are policies.

Bounded: it listens on 127.0.0.1 only, every blocking call has a timeout, and it
stops by itself after ``lifetime`` seconds (a test that forgets it cannot hang CI).
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

UP, DOWN = "up", "down"  # client -> server, server -> client


@dataclass
class Link:
    """One proxied connection, as a policy sees it."""

    id: int
    state: dict[str, Any] = field(default_factory=dict)  # the policy's own


Policy = Callable[[Link, str, bytes], "bytes | None"]


def forward_all(link: Link, direction: str, chunk: bytes) -> bytes | None:
    return chunk


class TcpProxy:
    """``with TcpProxy(host, port, policy) as proxy:`` clients connect to
    ``proxy.port`` on 127.0.0.1 instead of ``host:port``."""

    def __init__(self, host: str, port: int, policy: Policy = forward_all, *, lifetime: float = 300.0) -> None:
        self.target = (host, port)
        self.policy = policy
        self.lifetime = lifetime
        self.cuts = 0  # connections the policy cut
        self.links = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        accept = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)
        accept.start()
        self._threads.append(accept)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for sock in list(self._open):
                _shut(sock)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        until = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < until:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _shut(client)
                continue
            link = Link(next(self._ids))
            with self._lock:
                self.links += 1
                self._open.update((client, server))
            pump = threading.Thread(target=self._pump, args=(link, client, server, until),
                                    name=f"tcp-proxy-{link.id}", daemon=True)
            pump.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [pump]
        self._stop.set()

    def _pump(self, link: Link, client: socket.socket, server: socket.socket, until: float) -> None:
        """Both directions of one connection in one thread: the policy sees the chunks
        in the order they arrived, with no lock to take."""
        peer = {client: (server, UP), server: (client, DOWN)}
        try:
            while not self._stop.is_set() and time.monotonic() < until:
                ready, _, _ = select.select([client, server], [], [], 0.1)
                for sock in ready:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    target, direction = peer[sock]
                    out = self.policy(link, direction, chunk)
                    if out is None:
                        with self._lock:
                            self.cuts += 1
                        return
                    if out:
                        target.sendall(out)
        except OSError:
            return
        finally:
            with self._lock:
                for sock in (client, server):
                    self._open.discard(sock)
                    _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
