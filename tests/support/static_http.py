"""A static HTTP server on loopback for a TUF repository directory, with faults: a file cut short, a server down."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Self


class StaticServer:
    """Serves the files under `root` (GET, one request per connection), as nginx or a CDN would."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.port = 0
        self.cut_short: set[str] = set()  # file names whose body stops half way (Content-Length promises it all)
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening: clients get connection refused, as from a hub that is down."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            request = (await reader.readline()).decode("latin-1").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing in them matters here
            if len(request) < 2 or request[0] != "GET":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.requests.append(request[1])
            path = (self.root / request[1].lstrip("/")).resolve()
            if not path.is_relative_to(self.root) or not path.is_file():
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            body = path.read_bytes()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            if any(path.name.endswith(name) for name in self.cut_short):
                body = body[: len(body) // 2]  # then the connection closes: the client reads too few bytes
            writer.write(head + body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
