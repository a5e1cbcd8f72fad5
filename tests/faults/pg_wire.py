"""A ``tcp_proxy`` policy that loses Postgres replies after the server acted on them.

It follows the wire protocol (v3) of each connection: the client's requests, each
ending with a Sync or a simple Query (the SQL comes from the Parse, or from the named
statement a Bind refers to: psycopg prepares statements it repeats), and the
server's answers, each ending with ReadyForQuery.  When ``choose(sql, transaction)``
says yes for a request (``transaction``: the SQL of the requests before it in the same
transaction), the whole answer is held back until ReadyForQuery, i.e. until the server
has finished the statement (and committed it, for an autocommit statement or a
COMMIT), then dropped, and the connection is cut: the client sees the link break with
its write done but unacknowledged.  Only requests that execute a statement are
offered: one that only prepares it (psycopg sends Parse + Sync on its own before the
first execution of a statement it prepares) has no write whose answer could be lost.

Clients must not use TLS (``sslmode=disable``): the policy has to read the traffic.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .tcp_proxy import DOWN, Link

Chooser = Callable[[str, list[str]], bool]


@dataclass
class _Wire:
    up: bytearray = field(default_factory=bytearray)
    down: bytearray = field(default_factory=bytearray)
    started: bool = False  # the untyped startup message has gone by
    statements: dict[str, str] = field(default_factory=dict)  # prepared name -> SQL
    current: list[str] = field(default_factory=list)  # SQL of the request being sent
    executes: bool = False  # the request being sent runs a statement (not only prepares one)
    pending: deque[tuple[str, bool]] = field(default_factory=deque)  # (sql, drop its answer) awaiting answers
    transaction: list[str] = field(default_factory=list)
    refusals: int = 0  # single-byte answers owed to SSL/GSS requests ("N": not here)


class ReplyDropper:
    """The policy; ``dropped`` lists the SQL whose answers were lost."""

    def __init__(self, choose: Chooser) -> None:
        self.choose = choose
        self.dropped: list[str] = []
        self._lock = threading.Lock()  # ``choose`` may count across connections

    def __call__(self, link: Link, direction: str, chunk: bytes) -> bytes | None:
        wire: _Wire = link.state.setdefault("pg", _Wire())
        if direction == DOWN:
            return self._down(wire, chunk)
        self._up(wire, chunk)
        return chunk

    def _up(self, wire: _Wire, chunk: bytes) -> None:
        wire.up += chunk
        while True:
            if not wire.started:
                if len(wire.up) < 4:
                    return
                size = struct.unpack("!I", wire.up[:4])[0]
                if len(wire.up) < size:
                    return
                code = struct.unpack("!I", wire.up[4:8])[0] if size >= 8 else 0
                del wire.up[:size]
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: the startup follows
                    wire.refusals += 1
                else:
                    wire.started = True
                continue
            if len(wire.up) < 5:
                return
            kind, size = chr(wire.up[0]), struct.unpack("!I", wire.up[1:5])[0]
            if len(wire.up) < 1 + size:
                return
            body = bytes(wire.up[5:1 + size])
            del wire.up[:1 + size]
            if kind == "Q":
                self._request(wire, body.split(b"\0", 1)[0].decode())
            elif kind == "P":
                name, sql = body.split(b"\0")[:2]
                wire.statements[name.decode()] = sql.decode()
                wire.current.append(sql.decode())
            elif kind == "B":
                statement = body.split(b"\0")[1].decode()
                if statement:  # a prepared statement, parsed by an earlier request
                    wire.current.append(wire.statements.get(statement, ""))
            elif kind == "E":
                wire.executes = True
            elif kind == "S":
                self._request(wire, "; ".join(dict.fromkeys(wire.current)), wire.executes)
                wire.current, wire.executes = [], False

    def _request(self, wire: _Wire, sql: str, executes: bool = True) -> None:
        # a request that only prepares a statement (psycopg sends Parse + Sync on its
        # own before the first execution of a prepared one) has no effect to lose
        with self._lock:
            drop = executes and self.choose(sql, list(wire.transaction))
        wire.pending.append((sql, drop))
        wire.transaction.append(sql)

    def _down(self, wire: _Wire, chunk: bytes) -> bytes | None:
        wire.down += chunk
        out = bytearray()
        while wire.refusals and wire.down:
            out.append(wire.down.pop(0))
            wire.refusals -= 1
        while len(wire.down) >= 5:
            kind, size = chr(wire.down[0]), struct.unpack("!I", wire.down[1:5])[0]
            if len(wire.down) < 1 + size:
                break
            message = bytes(wire.down[:1 + size])
            del wire.down[:1 + size]
            sql, drop = wire.pending[0] if wire.pending else ("", False)
            if not drop:
                out += message
            if kind != "Z":
                continue
            if wire.pending:
                wire.pending.popleft()
            if message[5:6] == b"I":  # idle: the transaction (if any) is over
                wire.transaction = []
            if drop:
                with self._lock:
                    self.dropped.append(sql)
                return None  # the server answered; the client never hears it
        return bytes(out)
