"""Coalescing concurrent script calls into pipelines (one round trip for many callers).

Each caller's ``FCALL`` waits in a queue; a flusher sends everything queued as one
non-transactional pipeline and hands each reply back to its caller. The pipeline is
written in RESP directly (:func:`pack_fcall`) on a connection of the client's pool
and its replies are read one by one with the connection's own parser: redis-py's
generic pipeline (a command stack, a per-argument encoder, response callbacks) cost
more CPU per call than the script call's own work in Python. While up to
``max_in_flight`` pipelines are out, new calls wait and go in the next one, so the
batch grows with the load and a lone caller pays no delay beyond one loop turn.

Two or more calls of a script with a batch form (:data:`BATCHED`: ``reserve``, ``hold``)
in one pipeline go as one call of that form (``reserve_many``, ``hold_many``), which runs
each order as the script would and answers each on its own; only the call's fixed costs
are shared.

Semantics are those of separate calls: each script stays atomic on its own (no
MULTI), replies and errors are per call, a "function not found" reply (library not
on that server: new or flushed server, failover) loads the library and runs that call
again (it did not run). If the
connection fails mid-pipeline, every call of that pipeline fails with the error: some
may have run — exactly the ambiguity of a timeout on a single call, which the engine
already answers with ``EngineUnavailable`` and ids that make retries safe.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from onhand.engine.scripts import ScriptFunction, function_missing

__all__ = ["BATCHED", "BatchCommand", "Coalescer", "batch_commands", "pack_fcall"]

_FCALL = b"*%d\r\n$5\r\nFCALL\r\n$%d\r\n%b\r\n$%d\r\n%d\r\n"
_FCALL_TEXT = "*%d\r\n$5\r\nFCALL\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n"


def pack_fcall(function: str, keys: Sequence[str], args: Sequence[str]) -> bytes:
    """``FCALL function len(keys) *keys *args`` as one RESP array (UTF-8 bulk strings).

    Keys, ids and numbers are ASCII (allow-listed), where a string's length is its
    byte length: the command is then built as one text and encoded once; anything
    else is encoded item by item."""
    n = len(keys)
    text = _FCALL_TEXT % (3 + n + len(args), len(function), function, len(str(n)), n)
    text += "".join([f"${len(item)}\r\n{item}\r\n" for item in (*keys, *args)])
    if text.isascii():
        return text.encode()
    name = function.encode()
    parts = [_FCALL % (3 + n + len(args), len(name), name, len(str(n)), n)]
    for item in (*keys, *args):
        data = item.encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


_Call = tuple[ScriptFunction, Sequence[str], Sequence[str], "asyncio.Future[Any]"]

BATCHED = {"reserve": "reserve_many", "hold": "hold_many"}
"""Scripts with a batch form: several calls of the key go out as one call of the value
(each call's KEYS and ARGV as a block; see ``lua/reserve_many.lua``, ``lua/hold_many.lua``)."""


class BatchCommand(NamedTuple):
    """One FCALL of a pipeline and the calls it answers."""

    function: str
    keys: Sequence[str]
    args: Sequence[str]
    calls: list[_Call]
    batched: bool


def batch_commands(batch: list[_Call]) -> list[BatchCommand]:
    """The FCALLs that carry ``batch``: each call as itself, except that two or more
    calls of a script with a batch form (:data:`BATCHED`) become one call of that form,
    placed where the first of them was."""
    groups: dict[str, list[_Call]] = {}
    for call in batch:
        if call[0].name in BATCHED:
            groups.setdefault(call[0].name, []).append(call)
    commands: list[BatchCommand] = []
    for call in batch:
        script, keys, args, _ = call
        group = groups.get(script.name)
        if group is None or len(group) == 1:
            commands.append(BatchCommand(script.function, keys, args, [call], False))
        elif group[0] is call:
            head = [str(len(group))]
            for _, k, a, _ in group:
                head += (str(len(k)), str(len(a)))
            commands.append(
                BatchCommand(
                    script.sibling(BATCHED[script.name]).function,
                    [key for _, k, _, _ in group for key in k],
                    head + [arg for _, _, a, _ in group for arg in a],
                    group,
                    True,
                )
            )
    return commands


class Coalescer:
    """Concurrent script calls sent as shared pipelines (module docstring).

    Up to ``eager_in_flight`` pipelines (one) go out as soon as calls wait, whatever
    their number: a lone call waits for nothing, and calls that arrive while it is out
    wait for it (one round trip) and go together. Beyond that, up to
    ``max_in_flight`` pipelines, only a full batch (``max_batch`` calls) is sent, so
    under heavy load Redis always has work queued in slices of a few milliseconds
    instead of one long batch per round trip (a 256-call batch of ``reserve`` is
    ≈ 15 ms of Redis time, during which its callers wait and, once it answers, Redis
    idles while they are handled). One eager pipeline rather than two: under HTTP
    load the batches are half as many and twice as large (0.04 instead of 0.06 script
    calls per reservation with one API worker, 0.07 instead of 0.12 with two), which
    costs Redis and the worker less per call.
    """

    def __init__(
        self,
        client: Redis,
        *,
        max_batch: int = 32,
        max_in_flight: int = 8,
        eager_in_flight: int = 1,
    ) -> None:
        self.client = client
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.eager_in_flight = min(eager_in_flight, max_in_flight)
        self._queue: list[_Call] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pipelines = 0
        self.calls = 0
        self.largest_batch = 0
        self.peak_in_flight = 0
        self.batched = 0  # calls answered through a batch form (BATCHED)

    async def call(self, script: ScriptFunction, keys: Sequence[str], args: Sequence[str]) -> Any:
        # One loop per coalescer (the client's connections belong to it anyway); looked
        # up once, because get_running_loop() costs a getpid() syscall on Python 3.11.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            if self._in_flight >= self.eager_in_flight and len(self._queue) < self.max_batch:
                return  # a partial batch waits for a pipeline to come back
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            self._in_flight += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            task = self._loop.create_task(self._send(batch))  # type: ignore[union-attr]
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            try:
                commands = batch_commands(batch)
                payload = b"".join(pack_fcall(c.function, c.keys, c.args) for c in commands)
                replies = await self._roundtrip(payload, len(commands))
            except BaseException as exc:  # the connection failed: every call shares it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            self.pipelines += 1
            self.calls += len(batch)
            for command, reply in zip(commands, replies, strict=True):
                if command.batched and not function_missing(reply):
                    self.batched += len(command.calls)
                    self._answer_batch(command.calls, reply)
                    continue
                for script, keys, args, future in command.calls:
                    if future.done():
                        continue
                    if function_missing(reply):
                        self._rerun(script, keys, args, future)
                    elif isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._in_flight -= 1
            self._kick()

    @staticmethod
    def _answer_batch(calls: list[_Call], reply: Any) -> None:
        """Hand each call of a batch FCALL its own reply (``reserve_many``'s contract:
        ``['OK', '0', reply_1, …]``); an error of the whole call goes to every call."""
        if isinstance(reply, Exception):
            answers: list[Any] = [reply] * len(calls)
        elif isinstance(reply, list) and len(reply) == len(calls) + 2 and reply[0] == b"OK":
            answers = reply[2:]
        else:
            error = ResponseError(f"batch call: unexpected reply {reply!r:.200}")
            answers = [error] * len(calls)
        for (*_, future), answer in zip(calls, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _roundtrip(self, payload: bytes, count: int) -> list[Any]:
        """Write ``payload`` (``count`` commands) on one pooled connection and read the
        ``count`` replies; an error reply is returned as its exception.

        The connection's ``socket_timeout`` bounds reading the whole batch (one
        deadline, not one timer per reply); running out of it raises redis-py's
        ``TimeoutError``, as a single call would. If anything fails half-way the
        connection is dropped (never handed on with unread replies) and the error
        raised."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            try:
                await conn.send_packed_command(payload)
                replies: list[Any] = []
                async with asyncio.timeout(conn.socket_timeout):
                    for _ in range(count):
                        try:
                            replies.append(await conn.read_response(timeout=math.inf))
                        except ResponseError as exc:
                            replies.append(exc)
            except TimeoutError as exc:
                await conn.disconnect(nowait=True)
                raise RedisTimeoutError(f"reading {count} coalesced replies: {exc}") from exc
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            return replies
        finally:
            await pool.release(conn)

    def _rerun(
        self, script: ScriptFunction, keys: Sequence[str], args: Sequence[str], future: Any
    ) -> None:
        async def again() -> None:
            try:
                future.set_result(await script(keys=list(keys), args=list(args)))
            except Exception as exc:
                future.set_exception(exc)

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
