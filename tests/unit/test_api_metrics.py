"""The request metrics counted in plain numbers expose exactly what prometheus_client's
own Counter and Histogram expose for the same requests (without ``_created``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from onhand.api.metrics import LATENCY_BUCKETS, ApiMetrics

HOT = ("onhand_http_requests", "onhand_http_request_seconds", "onhand_reservations")
REQUESTS = [  # (route, method, status, seconds): bounds exactly, between, beyond the last
    ("/v1/reservations", "POST", 201, 0.0005),
    ("/v1/reservations", "POST", 201, 0.0007),
    ("/v1/reservations", "POST", 409, 0.003),
    ("/v1/reservations", "POST", 503, 2.5),
    ("/v1/skus/{sku}/availability", "GET", 200, 0.0),
    ("/v1/skus/{sku}/availability", "GET", 304, 1.0),
    ("/v1/skus/{sku}/availability", "GET", 200, 0.25),
]
OUTCOMES = ["held", "held", "insufficient", "replayed", "held"]


def _hot_lines(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [
        line
        for line in text.splitlines()
        if any(name in line for name in HOT) and "_created" not in line
    ]


def reference() -> CollectorRegistry:
    r = CollectorRegistry()
    requests = Counter(
        "onhand_http_requests", "HTTP requests.", ["route", "method", "status"], registry=r
    )
    latency = Histogram(
        "onhand_http_request_seconds",
        "HTTP request latency.",
        ["route", "method"],
        registry=r,
        buckets=LATENCY_BUCKETS,
    )
    outcomes = Counter(
        "onhand_reservations", "Reservation requests by outcome.", ["outcome"], registry=r
    )
    for route, method, status, seconds in REQUESTS:
        latency.labels(route, method).observe(seconds)
        requests.labels(route, method, f"{status // 100}xx").inc()
    for outcome in OUTCOMES:
        outcomes.labels(outcome).inc()
    return r


def test_the_request_metrics_expose_what_prometheus_client_would():
    metrics = ApiMetrics()
    for route, method, status, seconds in REQUESTS:
        metrics.route(route, method).done(status, seconds)
    for outcome in OUTCOMES:
        metrics.reservation(outcome)
    ours = _hot_lines(metrics.registry)
    assert ours == _hot_lines(reference())
    assert 'onhand_reservations_total{outcome="held"} 3.0' in ours
    assert any('le="+Inf"' in line and line.endswith(" 4.0") for line in ours)


def test_a_route_seen_but_not_yet_answered_shows_empty_buckets_and_no_count():
    metrics = ApiMetrics()
    metrics.route("/v1/reservations", "POST")
    lines = _hot_lines(metrics.registry)
    assert any('le="+Inf"' in line and line.endswith("} 0.0") for line in lines), lines
    assert not any(line.startswith("onhand_http_requests_total{") for line in lines)
