"""The reaper: returns overdue holds to stock, in bounded batches, forever.

Every ``interval_ms`` it asks the engine to expire due holds (one bounded script call
per partition, see ``expire.lua``) and repeats at once while a pass still found work,
so a burst of deadlines drains quickly without any one script running long. Several
reapers may run at once: each hold expires exactly once. Reserves that find a
shortfall also expire that SKU's overdue holds themselves (lazy expiry), so stock never
depends on the reaper alone.

``burst=True`` runs passes until one expires nothing, then returns (tests, CLI).
SIGINT/SIGTERM stop the loop after the pass in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from onhand.engine.base import StockEngine
from onhand.errors import EngineFault, EngineUnavailable

__all__ = ["Reaper"]

logger = logging.getLogger(__name__)


class Reaper:
    """Long-running expiry loop over one engine (``main()``, ``close()``, ``burst``)."""

    def __init__(
        self,
        engine: StockEngine,
        *,
        interval_ms: int = 100,
        batch: int = 500,
        max_passes_per_tick: int = 20,
        burst: bool = False,
    ) -> None:
        self.engine = engine
        self.interval_ms = interval_ms
        self.batch = batch
        self.max_passes_per_tick = max_passes_per_tick
        self.burst = burst
        self.expired_total = 0
        self.errors_total = 0
        self._stop = asyncio.Event()

    async def tick(self) -> int:
        """Run passes until one expires nothing (at most ``max_passes_per_tick``)."""
        expired = 0
        for _ in range(self.max_passes_per_tick):
            n = await self.engine.expire_due(self.batch)
            expired += n
            if n == 0:
                break
        self.expired_total += expired
        return expired

    async def main(self) -> None:
        """Loop until :meth:`close` (or, in burst mode, until nothing is due)."""
        backoff_ms = self.interval_ms
        while not self._stop.is_set():
            try:
                expired = await self.tick()
                backoff_ms = self.interval_ms
            except EngineUnavailable as exc:
                self.errors_total += 1
                backoff_ms = min(backoff_ms * 2, 5_000)
                logger.warning(
                    "reaper: engine unavailable (%s); retrying in %d ms", exc, backoff_ms
                )
                expired = -1
            except EngineFault:
                self.errors_total += 1
                logger.exception("reaper: engine fault; retrying")
                backoff_ms = min(backoff_ms * 2, 5_000)
                expired = -1
            if expired > 0:
                logger.info("reaper: expired %d holds", expired)
            if self.burst and expired == 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff_ms / 1000)

    def close(self) -> None:
        """Ask the loop to stop after the pass in flight."""
        self._stop.set()

    async def run(self) -> None:
        """:meth:`main` with SIGINT/SIGTERM wired to :meth:`close`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.close)
        try:
            await self.main()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
