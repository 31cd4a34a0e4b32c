"""Coalescing concurrent script calls into pipelines (one round trip for many callers).

Each caller's ``EVALSHA`` waits in a queue; a flusher sends everything queued as one
non-transactional pipeline and hands each reply back to its caller. While up to
``max_in_flight`` pipelines are out, new calls wait and go in the next one, so the
batch grows with the load and a lone caller pays no delay beyond one loop turn.

Semantics are those of separate calls: each script stays atomic on its own (no
MULTI), replies and errors are per call, a ``NOSCRIPT`` reply (script cache flushed,
failover) reloads the script and runs that call again (it did not run). If the
connection fails mid-pipeline, every call of that pipeline fails with the error: some
may have run — exactly the ambiguity of a timeout on a single call, which the engine
already answers with ``EngineUnavailable`` and ids that make retries safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["Coalescer"]

_Call = tuple[AsyncScript, Sequence[str], Sequence[str], "asyncio.Future[Any]"]


class Coalescer:
    def __init__(self, client: Redis, *, max_batch: int = 256, max_in_flight: int = 2) -> None:
        self.client = client
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[_Call] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pipelines = 0
        self.calls = 0

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str]) -> Any:
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
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            self._in_flight += 1
            task = self._loop.create_task(self._send(batch))  # type: ignore[union-attr]
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for script, keys, args, _ in batch:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    replies = await pipe.execute(raise_on_error=False)
            except BaseException as exc:  # the connection failed: every call shares it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            self.pipelines += 1
            self.calls += len(batch)
            for (script, keys, args, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, NoScriptError):
                    self._rerun(script, keys, args, future)
                elif isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        finally:
            self._in_flight -= 1
            self._kick()

    def _rerun(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str], future: Any
    ) -> None:
        async def again() -> None:
            try:
                future.set_result(await script(keys=list(keys), args=list(args)))
            except Exception as exc:
                future.set_exception(exc)

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
