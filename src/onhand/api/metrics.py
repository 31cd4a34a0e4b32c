"""Prometheus metrics of the API process (one registry per app, no globals).

Request metrics (count and latency by route template, method and status class) and
domain metrics: reservations by outcome, confirm latency, holds expired (from the
ledger), writer lag (entries and seconds, sampled by a background task) and
``onhand_oversell_total``, which counts units that availability reads found promised
beyond stock without the SKU's recorded exposure accounting for them — it must stay 0.

The three metrics every request touches (``onhand_http_requests_total``,
``onhand_http_request_seconds``, ``onhand_reservations_total``) are counted in plain
numbers and rendered by a collector when scraped: prometheus_client's own Counter and
Histogram take a lock per update (a histogram two), which cost ≈ 4 µs of a
reservation's ≈ 65 µs in the API worker. The event loop's thread is the only writer;
a scrape reads a copy of each series' buckets, so a histogram's count always equals
its +Inf bucket. The exposition is the one those classes give (without ``_created``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "ApiMetrics", "RouteMetrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds (seconds) of ``onhand_http_request_seconds``'s buckets, then +Inf."""

_LE = (*(repr(b) for b in LATENCY_BUCKETS), "+Inf")  # as prometheus_client writes them
_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


class RouteMetrics:
    """The request metrics of one route template and method: answered requests by
    status class and their latency, as plain numbers (module docstring). A status
    class appears in the exposition once a request of that class was counted."""

    __slots__ = ("by_class", "counts", "method", "route", "sum")

    def __init__(self, route: str, method: str) -> None:
        self.route, self.method = route, method
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, the last is +Inf
        self.sum = 0.0
        self.by_class: dict[str, int] = {}

    def done(self, status: int, seconds: float) -> None:
        """Count one answered request of ``status`` that took ``seconds``."""
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: value <= bound
        self.sum += seconds
        cls = _CLASSES.get(status // 100) or f"{status // 100}xx"
        self.by_class[cls] = self.by_class.get(cls, 0) + 1


class _HotMetrics(Collector):
    """Renders the routes' request metrics and the reservation outcomes."""

    def __init__(self, routes: dict[tuple[str, str], RouteMetrics], outcomes: dict[str, int]):
        self.routes, self.outcomes = routes, outcomes

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "onhand_http_requests", "HTTP requests.", labels=["route", "method", "status"]
        )
        latency = HistogramMetricFamily(
            "onhand_http_request_seconds", "HTTP request latency.", labels=["route", "method"]
        )
        for route in list(self.routes.values()):
            for cls, n in list(route.by_class.items()):
                requests.add_metric([route.route, route.method, cls], n)
            counts, total = list(route.counts), route.sum
            buckets, running = [], 0
            for le, n in zip(_LE, counts, strict=True):
                running += n
                buckets.append((le, running))
            latency.add_metric([route.route, route.method], buckets, total)
        outcomes = CounterMetricFamily(
            "onhand_reservations", "Reservation requests by outcome.", labels=["outcome"]
        )
        for outcome, n in list(self.outcomes.items()):
            outcomes.add_metric([outcome], n)
        yield requests
        yield latency
        yield outcomes


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._routes: dict[tuple[str, str], RouteMetrics] = {}
        self._outcomes: dict[str, int] = {}
        r.register(_HotMetrics(self._routes, self._outcomes))
        self.confirm_seconds = Histogram(
            "onhand_confirm_seconds",
            "Confirm latency including the ledger write-through.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
        )
        self.expired = Gauge(
            "onhand_expired_holds", "Holds expired so far (ledger count).", registry=r
        )
        self.writer_lag_entries = Gauge(
            "onhand_writer_lag_entries_total",
            "Stream entries not yet delivered to the ledger writer (all partitions).",
            registry=r,
        )
        self.writer_lag_seconds = Gauge(
            "onhand_writer_lag_seconds",
            "Age of the oldest event not yet committed to the ledger (max over partitions).",
            registry=r,
        )
        self.oversell = Counter(
            "onhand_oversell",
            "Units found promised beyond stock that no script accounted for. Must stay 0.",
            registry=r,
        )
        self.oversell.inc(0)

    def reservation(self, outcome: str) -> None:
        """Count one reservation request with ``outcome``."""
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    def route(self, route: str, method: str) -> RouteMetrics:
        """The request metrics of ``route`` (its template) and ``method``."""
        found = self._routes.get((route, method))
        if found is None:
            found = self._routes[route, method] = RouteMetrics(route, method)
        return found
