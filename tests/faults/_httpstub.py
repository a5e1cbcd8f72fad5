"""A tiny HTTP/1.1 server on 127.0.0.1 that answers every request the same way and
records what reached it (method, path): enough to play a misconfigured RPC endpoint,
a redirecting one, or the origin a redirect points to."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HttpStub:
    status: int = 200
    reason: str = "OK"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) received
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> HttpStub:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                if length:
                    await reader.readexactly(length)
                self.requests.append((method, path))
                extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
                writer.write(f"HTTP/1.1 {self.status} {self.reason}\r\nContent-Length: {len(self.body)}\r\n"
                             f"Content-Type: application/json\r\n{extra}\r\n".encode() + self.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
