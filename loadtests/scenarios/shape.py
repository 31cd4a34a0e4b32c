"""The flash-sale load shape (imports locust: gevent).

Reads the common options (``use_common_options``): ``-u`` is the base user count,
``-t`` the whole duration (default 60 s). Phases, for a duration T:

* 0 .. W (W = 20 % of T, at most 10 s): the base load;
* W .. W + 5 s: ramp to 10 x base (all user classes, in their weights);
* hold until 70 % of T;
* decay back to the base over 15 % of T (at least 5 s), then the base until T.

Enabled by ``ONHAND_LOAD_SHAPE=flash`` (see ``loadtests/locustfile.py``); without it
the run is the plain ``-u``/``-r``/``-t`` one.
"""

from __future__ import annotations

import time

from locust import LoadTestShape

__all__ = ["FlashSaleShape"]

RAMP_S = 5.0
PEAK_FACTOR = 10


class FlashSaleShape(LoadTestShape):
    abstract = True  # the locustfile enables a concrete subclass on request
    use_common_options = True

    def _options(self) -> tuple[int, float]:
        runner = self.runner
        options = runner.environment.parsed_options if runner is not None else None
        base = int(getattr(options, "num_users", 0) or 10)
        total = float(getattr(options, "run_time", 0) or 60)
        return base, total

    def tick(self) -> tuple[int, float] | None:
        base, total = self._options()
        peak = PEAK_FACTOR * base
        t = time.perf_counter() - self.start_time
        warm = min(10.0, 0.2 * total)
        hold_until = max(warm + RAMP_S, 0.7 * total)
        decay_s = max(5.0, 0.15 * total)
        if t >= total:
            return None
        if t < warm:
            return base, float(base)
        if t < hold_until:
            return peak, (peak - base) / RAMP_S
        return base, (peak - base) / decay_s
