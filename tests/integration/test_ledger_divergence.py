"""A movement's event id seen again from another stream position is divergent.

Redis reused an event id for a different event (it lost data and was not fenced):
``LedgerStore.apply`` and ``apply_staged`` report such ids in ``divergent`` and never
overwrite the stored movement; the same id from the same position is a plain duplicate
(a redelivery). Batches small enough to go as arrays and larger ones that are copied
(``ARRAY_ROWS``) both detect it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from onhand.events import Event, EventType
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.rows import build_batch, stage_entries
from onhand.ledger.store import ARRAY_ROWS, ApplyResult, LedgerStore

pytestmark = pytest.mark.postgres

Entry = tuple[int, str, Event]
Apply = Callable[[LedgerStore, list[Entry]], Awaitable[ApplyResult]]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[LedgerStore]:
    store = await LedgerStore.open(asyncpg_dsn(database_url))
    try:
        yield store
    finally:
        await store.close()


def _received(i: int) -> Event:
    return Event(f"e{i}", EventType.RECEIVED, 1_700_000_000_000 + i, "S", "W", version=i + 1)


async def _general(store: LedgerStore, entries: list[Entry]) -> ApplyResult:
    return await store.apply(build_batch(entries), lock_reservations=True)


async def _staged(store: LedgerStore, entries: list[Entry]) -> ApplyResult:
    flat = [
        (p, sid, [x.encode() for kv in e.to_fields().items() for x in kv]) for p, sid, e in entries
    ]
    staged = stage_entries(flat)
    assert staged is not None
    return await store.apply_staged(staged)


async def _positions(store: LedgerStore) -> dict[str, tuple[int, int, int]]:
    rows = await store.pool.fetch(
        "SELECT event_id, partition, stream_ms, stream_seq FROM movements"
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


@pytest.mark.parametrize("apply", [_general, _staged], ids=["general", "staged"])
@pytest.mark.parametrize("size", [3, ARRAY_ROWS + 10], ids=["small", "large"])
async def test_an_event_id_from_another_stream_position_is_divergent_and_kept_as_stored(
    store: LedgerStore, apply: Apply, size: int
) -> None:
    first = [(1, f"{100 + i}-0", _received(i)) for i in range(size)]
    assert (await apply(store, first)).inserted == size
    stored = await _positions(store)

    again = [*first[:-1], (1, "900-5", first[-1][2])]  # the last id, elsewhere
    again.append((1, f"{100 + size}-0", _received(size)))  # and one new event
    result = await apply(store, again)

    assert result.divergent == (f"e{size - 1}",)
    assert (result.inserted, result.duplicates) == (1, size)
    after = await _positions(store)
    assert after[f"e{size - 1}"] == stored[f"e{size - 1}"] == (1, 100 + size - 1, 0)
    assert len(after) == size + 1


@pytest.mark.parametrize("apply", [_general, _staged], ids=["general", "staged"])
async def test_the_same_event_from_the_same_position_is_a_duplicate_not_divergent(
    store: LedgerStore, apply: Apply
) -> None:
    entries = [(2, f"{200 + i}-1", _received(i)) for i in range(ARRAY_ROWS + 1)]
    await apply(store, entries)
    result = await apply(store, entries)
    assert (result.inserted, result.duplicates, result.divergent) == (0, len(entries), ())
