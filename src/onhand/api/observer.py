"""A background task per API process: samples writer lag and expiries for /readyz and
/metrics (Prometheus scrapes must not fan out to Redis and Postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import ResponseError

from onhand.api.services import Services
from onhand.ledger.fencing import stream_positions

__all__ = ["observe"]

log = logging.getLogger(__name__)


async def sample(services: Services) -> int:
    """Writer lag in ms (age of the newest event not yet committed; 0 when drained)."""
    engine, store, metrics = services.engine, services.store, services.metrics
    ends = await stream_positions(engine)
    marks = await store.watermarks()
    lag_ms = 0
    for p, end in ends.items():
        mark = marks.get(p, (0, 0))
        if end > mark:
            lag_ms = max(lag_ms, end[0] - mark[0] if mark[0] else 0)
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
    expired = await store.pool.fetchval(
        "SELECT count(*) FROM reservations WHERE status = 'expired'"
    )
    metrics.expired.set(int(expired))
    return lag_ms


async def observe(services: Services, state: object, interval_s: float = 1.0) -> None:
    """Run until cancelled; stores the last lag in ``state.writer_lag_ms`` (None: unknown)."""
    while True:
        try:
            setattr(state, "writer_lag_ms", await sample(services))  # noqa: B010
        except Exception as exc:  # keep sampling; readiness reports the gap
            setattr(state, "writer_lag_ms", None)  # noqa: B010
            log.debug("observer: %s", exc)
        await asyncio.sleep(interval_s)
