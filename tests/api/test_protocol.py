"""CoalescingWrites: what reaches the socket, in what order and when."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from onhand.api.protocol import CoalescingWrites


class Recorder:
    """The parts of a transport CoalescingWrites uses, recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def get_write_buffer_size(self) -> int:
        self.calls.append(("size", None))
        return 0


def wrap() -> tuple[CoalescingWrites, Recorder]:
    raw = Recorder()
    return CoalescingWrites(cast(asyncio.Transport, raw), asyncio.get_running_loop()), raw


async def test_writes_of_one_loop_step_leave_as_one_write_in_order() -> None:
    t, raw = wrap()
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"body")
    t.writelines([b"-1", b"-2"])
    assert raw.calls == []  # nothing yet: the step is not over
    await asyncio.sleep(0)
    assert raw.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody-1-2")]
    t.write(b"next")
    await asyncio.sleep(0)
    assert raw.calls[1:] == [("write", b"next")]


async def test_close_and_eof_send_what_is_gathered_first_and_abort_drops_it() -> None:
    t, raw = wrap()
    t.write(b"a")
    t.close()
    assert raw.calls == [("write", b"a"), ("close", None)]
    t, raw = wrap()
    t.write(b"b")
    t.write_eof()
    assert raw.calls == [("write", b"b"), ("write_eof", None)]
    t, raw = wrap()
    t.write(b"c")
    assert t.get_write_buffer_size() == 0
    assert raw.calls == [("write", b"c"), ("size", None)]
    t, raw = wrap()
    t.write(b"d")
    t.abort()
    await asyncio.sleep(0)  # the scheduled flush finds nothing
    assert raw.calls == [("abort", None)]
