"""Prometheus metrics of the stream writer (one registry per writer, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WriterMetrics"]


class WriterMetrics:
    """Writer lag (entries and seconds), pending entries, batch size and latency, and the
    counts of what could not be persisted (lost, dead-lettered, divergent)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("onhand_writer_events", "Events committed to Postgres.", registry=r)
        self.duplicates = Counter(
            "onhand_writer_duplicate_events",
            "Events already in the ledger (redeliveries).",
            registry=r,
        )
        self.batches = Counter("onhand_writer_batches", "Batches committed.", registry=r)
        self.batch_size = Histogram(
            "onhand_writer_batch_size",
            "Events per committed batch.",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000),
        )
        self.batch_seconds = Histogram(
            "onhand_writer_batch_seconds",
            "Time to commit one batch.",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.lost = Counter(
            "onhand_writer_lost_events",
            "Stream entries that vanished before they were persisted (trimmed while pending).",
            registry=r,
        )
        self.dead_lettered = Counter(
            "onhand_writer_dead_lettered_events", "Events moved to dead_letters.", registry=r
        )
        self.divergent = Counter(
            "onhand_writer_divergent_events",
            "Events whose id was already stored for another stream position (Redis rolled back).",
            registry=r,
        )
        self.postgres_errors = Counter(
            "onhand_writer_postgres_errors", "Failed attempts to reach Postgres.", registry=r
        )
        self.lag_entries = Gauge(
            "onhand_writer_lag_entries",
            "Entries not yet delivered to the writer.",
            ["partition"],
            registry=r,
        )
        self.pending_entries = Gauge(
            "onhand_writer_pending_entries",
            "Entries delivered but not yet acknowledged.",
            ["partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "onhand_writer_lag_seconds", "Age of the oldest entry not yet committed.", registry=r
        )
        self.last_commit = Gauge(
            "onhand_writer_last_commit_timestamp_seconds", "Time of the last commit.", registry=r
        )
