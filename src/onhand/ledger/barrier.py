"""Confirms (and SKU policies) survive Redis loss: their events reach Postgres before
the answer.

A confirmed order is money. :class:`DurableConfirms` runs the ``confirm`` script, then
writes the events it appended straight into the ledger (the same idempotent apply the
writer uses, minus the watermark: the writer deduplicates them later by event id) and
only then reports success. If Postgres cannot be reached the confirm has happened in
Redis but is *not acknowledged*: the caller gets ``EngineUnavailable`` and retries; a
retry finds the reservation confirmed (a repeat) and is acknowledged only once the
ledger holds the confirm — written through now, or drained by the writer within
``timeout_ms``.

What a hold (not yet money) can still lose is in docs/architecture.md: a ``reserve``
is acknowledged from Redis alone.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from onhand.domain import Reservation, SkuPolicy
from onhand.engine.redis import Confirmation, RedisEngine, StreamEvent
from onhand.errors import EngineUnavailable
from onhand.ledger.rows import Batch, add_reservation, build_batch
from onhand.ledger.store import LedgerStore
from onhand.ledger.writer import TRANSIENT_PG

__all__ = ["DurableConfirms", "set_policy_durably"]


def _movements_only(events: list[StreamEvent]) -> Batch:
    """The ledger rows of ``events``, without advancing watermarks or stock levels.

    A written-through event carries the record's absolute counters, which count earlier
    events of its stream that the writer may not have committed yet (and that Redis may
    still lose). The ``stock_levels`` projection is therefore left to the writer, which
    applies every event in stream order; rehydrate derives held and committed from the
    ledger's reservations (``settle_levels``).
    """
    batch = build_batch(
        [(e.partition, e.stream_id, e.event) for e in events], advance_watermarks=False
    )
    batch.levels.clear()
    return batch


def _confirmed_batch(confirmations: list[Confirmation]) -> Batch:
    """One batch recording every confirm of ``confirmations``: their movements and the
    reservations they confirm (which the writer may not have drained yet)."""
    batch = _movements_only([e for c in confirmations for e in c.events])
    for c in confirmations:
        add_reservation(batch, c.reservation, c.fingerprint, c.max_deadline_ms)
    return batch


def _settle(group: list[tuple[Confirmation, asyncio.Future[None]]], exc: Exception | None) -> None:
    """Wake every confirm of ``group`` still waiting: acknowledged (``exc`` is None) or
    failed with ``exc`` (a transient Postgres error as :class:`EngineUnavailable`)."""
    for confirmation, done in group:
        if done.done():
            continue
        if exc is None:
            done.set_result(None)
        elif isinstance(exc, (*TRANSIENT_PG, EngineUnavailable)):
            rid = confirmation.reservation.reservation_id
            why = exc if isinstance(exc, EngineUnavailable) else f"Postgres: {exc}"
            failure = EngineUnavailable(f"confirm of {rid} is not yet durable ({why}); retry")
            failure.__cause__ = exc
            done.set_exception(failure)
        else:
            done.set_exception(exc)


class DurableConfirms:
    """``confirm`` with a Postgres write-through barrier (see the module docstring).

    Group commit: confirms whose events come back from Redis while a write-through is
    in flight wait for it to finish, then go to Postgres together, in one transaction
    (at most ``max_group`` confirms). A lone confirm is written at once, so this adds
    no latency when idle; under load, one transaction, one lock wait and one WAL flush
    serve many confirms instead of each taking them in turn (the exclusive
    :data:`~onhand.ledger.store.WRITE_THROUGH_LOCK` serialises write-throughs), and
    one pool connection is used instead of one per waiting confirm. Every confirm is
    acknowledged only after the transaction holding its events has committed. If a
    group fails with anything but a transient Postgres error, each of its confirms is
    written again on its own, so one bad confirm cannot fail the others.
    """

    def __init__(
        self,
        engine: RedisEngine,
        store: LedgerStore,
        *,
        timeout_ms: int = 2_000,
        max_group: int = 256,
    ) -> None:
        self.engine = engine
        self.store = store
        self.timeout_ms = timeout_ms
        self.max_group = max_group
        self._waiting: list[tuple[Confirmation, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def confirm(self, reservation_id: str, *, actor: str = "") -> Reservation:
        confirmation = await self.engine.confirm_with_events(reservation_id, actor=actor)
        if confirmation.events:
            await self._write_through(confirmation)
        else:
            await self._wait_durable(reservation_id)
        return confirmation.reservation

    async def _write_through(self, confirmation: Confirmation) -> None:
        """Return once ``confirmation``'s events are committed to the ledger; raise
        :class:`EngineUnavailable` if Postgres did not take them."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((confirmation, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_all())
        # A caller that goes away (a client disconnect) cancels only its own wait: the
        # flush is a task of its own and writes that confirm's events all the same
        # (``close`` waits for it).
        await done

    async def close(self) -> None:
        """Return once every write-through in flight has finished, including those of
        callers that went away and are no longer waiting for it. Call before closing
        the store's pool, after the server has stopped taking requests; cancelling
        ``close`` leaves the writes running."""
        while (flusher := self._flusher) is not None:
            await asyncio.wait({flusher})

    async def _flush_all(self) -> None:
        group: list[tuple[Confirmation, asyncio.Future[None]]] = []
        try:
            while self._waiting:
                group = self._waiting[: self.max_group]
                del self._waiting[: self.max_group]
                await self._flush(group)
            group = []
        finally:
            self._flusher = None
            # only if this task was cancelled (shutdown): nobody may wait forever
            _settle(group + self._waiting, EngineUnavailable("its write was cancelled"))
            self._waiting.clear()

    async def _flush(self, group: list[tuple[Confirmation, asyncio.Future[None]]]) -> None:
        try:
            await self._apply(_confirmed_batch([c for c, _ in group]))
        except TRANSIENT_PG as exc:
            _settle(group, exc)
        except Exception as exc:
            if len(group) == 1:
                _settle(group, exc)
                return
            for one in group:  # isolate the confirm that fails, if it is one
                await self._flush([one])
        else:
            _settle(group, None)

    async def _apply(self, batch: Batch) -> None:
        """Write through, serialised with the writer's transactions (``write_through``:
        see ``onhand.ledger.store.WRITE_THROUGH_LOCK``); a deadlock Postgres breaks
        anyway is retried (apply is idempotent)."""
        for attempt in range(3):
            try:
                await self.store.apply(batch, lock_reservations=True, write_through=True)
                return
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))

    async def _wait_durable(self, reservation_id: str) -> None:
        deadline = time.monotonic() + self.timeout_ms / 1000
        delay = 0.01
        while True:
            try:
                if await self.store.has_movement(reservation_id, "confirmed"):
                    return
            except TRANSIENT_PG as exc:
                raise EngineUnavailable(f"confirm durability unknown (Postgres: {exc})") from exc
            if time.monotonic() >= deadline:
                raise EngineUnavailable(
                    f"confirm of {reservation_id} is not yet in the ledger; retry later"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)


async def set_policy_durably(
    engine: RedisEngine, store: LedgerStore, sku: str, policy: SkuPolicy, *, actor: str = ""
) -> SkuPolicy:
    """Set ``sku``'s policy in Redis, then write its ``policy_set`` event through to the
    ledger before answering: Postgres is the policy's record, and a PUT that was
    acknowledged survives losing Redis (rehydrate loads policies from the ledger).

    If Postgres cannot be reached the policy is live in Redis but *not acknowledged*:
    ``EngineUnavailable``; a retry sets it again (a new version with the same values) and
    the writer records the first one later by its event id.
    """
    events = await engine.set_policy_with_events(sku, policy, actor=actor)
    batch = _movements_only(events)
    try:
        await store.apply(batch, write_through=True)
    except TRANSIENT_PG as exc:
        raise EngineUnavailable(
            f"policy of {sku} is set but not yet durable (Postgres: {exc}); retry"
        ) from exc
    return policy
