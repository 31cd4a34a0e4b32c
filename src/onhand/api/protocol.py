"""uvicorn's httptools protocol with one ``write`` per response instead of two.

uvicorn writes a response's status line and headers with one ``transport.write`` and
its body with another: two syscalls and two TCP segments per response (on loopback each
``write`` also runs the receiver's TCP path in the sender's time slice), which was a
quarter of the API worker's busy time under reservation load. :class:`CoalescingWrites`
gathers every write made to a connection within one event-loop step and hands them to
the socket as one ``write`` at the end of that step (``loop.call_soon``). Bytes, their
order and the connection's lifecycle are unchanged: ``close``/``write_eof`` first send
what is gathered, ``abort`` drops it as it drops the socket buffer. Nothing is held
past the current loop step, so a ``100 Continue`` or a streamed chunk leaves as before.

Select it with ``uvicorn --http onhand.api.protocol:OneWriteHttpToolsProtocol`` (the
``onhand serve`` command does).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingWrites", "OneWriteHttpToolsProtocol"]


class CoalescingWrites(asyncio.Transport):
    """A transport wrapper: writes within one loop step go out as one ``write``.

    Contract: the wrapped transport receives exactly the bytes written here, in order;
    they reach it no later than the end of the loop step that wrote them, and before
    any ``close``, ``write_eof`` or a write-buffer query made in between.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            pending.append(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand everything gathered to the socket now (one ``write``)."""
        pending, self._pending = self._pending, None
        if pending:
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        self.flush()
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol over :class:`CoalescingWrites` (module doc)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        super().connection_made(CoalescingWrites(cast(asyncio.Transport, transport), self.loop))
