"""Prometheus metrics of the API process (one registry per app, no globals).

Request metrics (count and latency by route template, method and status class) and
domain metrics: reservations by outcome, confirm latency, holds expired (from the
ledger), writer lag (entries and seconds, sampled by a background task) and
``onhand_oversell_total``, which counts units that availability reads found promised
beyond stock without the SKU's recorded exposure accounting for them — it must stay 0.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ApiMetrics", "RouteMetrics"]


class RouteMetrics:
    """The request metrics of one route template and method, with their label children
    looked up once (``labels()`` costs a lock and a dict lookup per call). A status
    class appears in the exposition once a request of that class was counted."""

    __slots__ = ("_by_class", "_latency", "_method", "_requests", "_route")

    def __init__(self, requests: Counter, latency: Histogram, route: str, method: str) -> None:
        self._requests, self._route, self._method = requests, route, method
        self._latency = latency.labels(route, method)
        self._by_class: dict[int, Any] = {}

    def done(self, status: int, seconds: float) -> None:
        """Count one answered request of ``status`` that took ``seconds``."""
        self._latency.observe(seconds)
        counter = self._by_class.get(status // 100)
        if counter is None:
            counter = self._by_class[status // 100] = self._requests.labels(
                self._route, self._method, f"{status // 100}xx"
            )
        counter.inc()


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "onhand_http_requests", "HTTP requests.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "onhand_http_request_seconds",
            "HTTP request latency.",
            ["route", "method"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.reservations = Counter(
            "onhand_reservations", "Reservation requests by outcome.", ["outcome"], registry=r
        )
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
        self._routes: dict[tuple[str, str], RouteMetrics] = {}
        self._outcomes: dict[str, Any] = {}

    def reservation(self, outcome: str) -> None:
        """Count one reservation request with ``outcome`` (label child looked up once)."""
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.reservations.labels(outcome)
        child.inc()

    def route(self, route: str, method: str) -> RouteMetrics:
        """The request metrics of ``route`` (its template) and ``method``."""
        found = self._routes.get((route, method))
        if found is None:
            found = self._routes[route, method] = RouteMetrics(
                self.requests, self.latency, route, method
            )
        return found
