"""A TCP proxy that a test can cut and restore: a real outage of a database or a store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.engine import make_url


class CuttableProxy:
    """Forwards 127.0.0.1:port to a server (TCP or unix socket) until `cut()`."""

    def __init__(self, host: str, port: int, unix_path: str | None = None) -> None:
        self._unix = unix_path
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.is_cut = False
        self.port = 0
        self._database_url = ""

    @classmethod
    def for_database(cls, database_url: str) -> CuttableProxy:
        """A proxy in front of the PostgreSQL server of a SQLAlchemy URL."""
        url = make_url(database_url)
        socket_dir = url.query.get("host")
        unix = f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if socket_dir else None
        proxy = cls(url.host or "127.0.0.1", url.port or 5432, unix)
        proxy._database_url = database_url
        return proxy

    @property
    def url(self) -> str:
        """The database URL through this proxy."""
        url = make_url(self._database_url).set(host="127.0.0.1", port=self.port)
        url = url.difference_update_query(["host"])
        return url.render_as_string(hide_password=False)

    @property
    def origin(self) -> str:
        """http://127.0.0.1:port of this proxy."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for link in list(self._links):
            link.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self.is_cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        """Accept connections again."""
        self.is_cut = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            link = asyncio.create_task(self._pipe(source, sink))
            self._links.add(link)
            link.add_done_callback(self._links.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
            while data := await source.read(65536):
                if self.is_cut:
                    break
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
        self._writers.discard(sink)


@contextlib.asynccontextmanager
async def cuttable(database_url: str) -> AsyncIterator[CuttableProxy]:
    """A started proxy in front of a database, always stopped."""
    async with started(CuttableProxy.for_database(database_url)) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def started(proxy: CuttableProxy) -> AsyncIterator[CuttableProxy]:
    """Start a proxy; always stop it."""
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
