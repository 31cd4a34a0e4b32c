"""A background task per API process: samples writer lag and expiries for /readyz and
/metrics (Prometheus scrapes must not fan out to Redis and Postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from redis.exceptions import ResponseError

from onhand.api.services import Services
from onhand.ledger.fencing import stream_positions

__all__ = ["observe"]

log = logging.getLogger(__name__)


async def sample(services: Services, *, count_expired: bool = True) -> int:
    """Writer lag in ms: 0 when drained, else the time since the last committed event of
    the partition furthest behind (Redis clock; an upper bound of the oldest waiting
    event's age).

    With ``count_expired`` also refreshes the expired-holds gauge (a count over the
    ledger's reservations, so the observer does it only every tenth sample)."""
    engine, store, metrics = services.engine, services.store, services.metrics
    ends = await stream_positions(engine)
    marks = await store.watermarks()
    seconds, micros = await engine.client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    lag_ms = 0
    for p, end in ends.items():
        mark = marks.get(p)
        if mark is not None and end <= mark:
            continue
        if mark is None:  # nothing committed yet: the stream's first entry is waiting
            first = await engine.client.xrange(engine.keys.stream(p), count=1)
            if not first:
                continue
            raw = first[0][0]
            first_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            mark = (int(first_id.split("-")[0]), 0)
        # Events newer than the last committed one are waiting: at least this old.
        lag_ms = max(lag_ms, now_ms - mark[0])
    entries = 0
    for p in range(engine.keys.partitions):
        with contextlib.suppress(ResponseError):
            for group in await engine.client.xinfo_groups(engine.keys.stream(p)):
                name = group["name"]
                if (name.decode() if isinstance(name, bytes) else name) == (
                    services.settings.writer_group
                ):
                    entries += int(group.get("lag") or 0)
    metrics.writer_lag_seconds.set(lag_ms / 1000)
    metrics.writer_lag_entries.set(entries)
    if count_expired:
        expired = await store.pool.fetchval(
            "SELECT count(*) FROM reservations WHERE status = 'expired'"
        )
        metrics.expired.set(int(expired))
    return lag_ms


async def observe(services: Services, state: object, interval_s: float = 1.0) -> None:
    """Run until cancelled; stores the last lag in ``state.writer_lag_ms`` (None: unknown)."""
    for n in itertools.count():
        try:
            lag_ms = await sample(services, count_expired=n % 10 == 0)
            setattr(state, "writer_lag_ms", lag_ms)  # noqa: B010
        except Exception as exc:  # keep sampling; readiness reports the gap
            setattr(state, "writer_lag_ms", None)  # noqa: B010
            log.debug("observer: %s", exc)
        await asyncio.sleep(interval_s)
