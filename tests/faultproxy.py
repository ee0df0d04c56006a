"""A fault-injecting TCP proxy: the app reaches PostgreSQL through it, and a test (or the chaos
benchmark) drops every connection, refuses new ones for a while, or slows every byte."""

from __future__ import annotations

import asyncio
import contextlib
import time

from sqlalchemy.engine import make_url


class FaultProxy:
    """``async with FaultProxy("127.0.0.1", 5432) as proxy: proxy.url(database_url) ...``"""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.target_port = port
        self.port = 0
        self.latency = 0.0  # seconds added to every chunk, each way
        self.connections = 0  # accepted and forwarded, in all
        self.refused = 0
        self._refuse_until = 0.0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port pointed at the proxy."""
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    # -- faults ----------------------------------------------------------------------------

    def drop(self) -> None:
        """Cut every open connection, as a failover or a network drop does."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def refuse(self, seconds: float) -> None:
        """Turn away new connections for ``seconds`` (each is closed at once)."""
        self._refuse_until = time.monotonic() + seconds

    def outage(self, seconds: float) -> None:
        """The database is gone for ``seconds``: open connections cut, new ones turned away."""
        self.refuse(seconds)
        self.drop()

    @property
    def down(self) -> bool:
        return time.monotonic() < self._refuse_until

    # -- plumbing --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, upstream_writer))
        for source, target in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, target))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
