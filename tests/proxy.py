"""A small asyncio TCP proxy for fault tests: cut a client off a server without touching it.

::

    async with TcpProxy.for_url(database_url) as proxy:
        conn = await asyncpg.connect(proxy.url_for(database_url))
        await proxy.cut()       # current connections closed, new ones refused
        ...                     # the client sees the network fail; the server is fine
        await proxy.restore()   # new connections go through again

The proxy listens on 127.0.0.1 on a free port and runs in the event loop of the
test that starts it (start, use and stop it in the same loop). Bytes are relayed
unchanged in both directions; when either side closes or fails, both sides of that
connection are closed.

:meth:`TcpProxy.cut` closes every relayed connection (both sides) and then, until
:meth:`TcpProxy.restore`, either refuses new connections (accepts and closes them at
once: the client sees the connection reset or closed) or, with ``hold=True``,
accepts and parks them without connecting upstream; they are relayed from
``restore()`` on, or closed by ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DEFAULT_PORTS", "TcpProxy"]

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379}
"""Ports assumed by :meth:`TcpProxy.for_url` for URLs that name none, by scheme base."""

_CHUNK = 65536


def _scheme_base(scheme: str) -> str:
    return scheme.lower().partition("+")[0]


class _Link:
    """One relayed connection: the client's stream, the upstream one, the relay task."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class TcpProxy:
    """A TCP relay from ``host:port`` (127.0.0.1, a free port) to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        self._mode = "open"  # "open", "refuse" or "hold"
        self._restored = asyncio.Event()
        self._restored.set()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        """A proxy to the host and port named in ``url`` (``postgresql://``, ``redis://``…)."""
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"URL names no host: {url!r}")
        port = parts.port or DEFAULT_PORTS.get(_scheme_base(parts.scheme))
        if port is None:
            raise ValueError(f"URL names no port and {parts.scheme!r} has no default: {url!r}")
        return cls(parts.hostname, port)

    # -- addresses -----------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on; known once started."""
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (user, path, query kept).

        A ``host=`` query parameter (libpq's, asyncpg's) would override the address,
        so such URLs are refused.
        """
        parts = urlsplit(url)
        if any(item.split("=", 1)[0] in ("host", "port") for item in parts.query.split("&")):
            raise ValueError(f"URL sets host or port in its query; cannot redirect: {url!r}")
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{self.host}:{self.port}"))

    @property
    def connections(self) -> int:
        """How many connections are being relayed right now."""
        return sum(1 for link in self._links if link.upstream is not None)

    @property
    def is_cut(self) -> bool:
        """True between :meth:`cut` and :meth:`restore`."""
        return self._mode != "open"

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host`` at a free port and start relaying."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self._port = self._server.sockets[0].getsockname()[1]

    async def cut(self, *, hold: bool = False) -> None:
        """Close every current connection; refuse new ones (or hold them) until restored."""
        self._mode = "hold" if hold else "refuse"
        self._restored.clear()
        await self._close_links(only_relaying=True)

    async def restore(self) -> None:
        """Relay new connections again, held ones included."""
        self._mode = "open"
        self._restored.set()

    async def stop(self) -> None:
        """Stop listening and close every connection, held ones included. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._close_links(only_relaying=False)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self._port} -> {self.target_host}:{self.target_port} "
            f"{self._mode} connections={self.connections}>"
        )

    # -- internals -----------------------------------------------------------

    async def _close_links(self, *, only_relaying: bool) -> None:
        links = [link for link in self._links if link.upstream is not None or not only_relaying]
        for link in links:
            link.abort()
        # Let the relay tasks see their streams end and finish.
        for _ in range(10):
            if not any(link in self._links for link in links):
                break
            await asyncio.sleep(0.01)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._relay(link, reader)
        except asyncio.CancelledError:
            raise
        except Exception:  # a fault test's network failure is not a proxy error
            pass
        finally:
            self._links.discard(link)
            link.abort()
            self._tasks.discard(task)

    async def _relay(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        if self._mode == "refuse":
            return
        if self._mode == "hold":
            await self._restored.wait()
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        link.upstream = up_writer
        if self._mode != "open":  # cut while we were connecting
            return
        pumps = [
            asyncio.create_task(self._pump(client_reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, link.client)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
