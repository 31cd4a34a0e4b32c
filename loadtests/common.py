"""Shared plumbing for benchmarks: servers, a throwaway database, figures and tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import redis

from onhand.ledger.migrate import asyncpg_dsn, upgrade

REDIS_URL = os.environ.get("ONHAND_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "ONHAND_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fixed_and_per_unit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``cost of a call = fixed + per_unit * units`` over ``points`` of
    (units in a call, cost per unit), at least two sizes: ``(fixed, per_unit)`` in the
    points' cost unit. (A batch's cost split into its part per call and per item.)"""
    if len({units for units, _ in points}) < 2:
        raise ValueError("a split needs at least two sizes")
    per_unit, fixed = statistics.linear_regression(
        [float(units) for units, _ in points], [cost * units for units, cost in points]
    )
    return fixed, per_unit


YARDSTICK_ADDS = 1_000_000


def cpu_yardstick_ms(repeat: int = 5) -> float:
    """Milliseconds this process takes for a fixed pure-Python loop (10⁶ additions), the
    fastest of ``repeat`` tries.

    A machine-speed reference printed with every run: hosts (and one host over a
    session) differ by tens of percent, so absolute figures of different runs compare
    only after scaling by this, or through each run's same-run baselines.
    """
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        total = 0
        for i in range(YARDSTICK_ADDS):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def machine() -> dict[str, str]:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        redis_version = str(r.info("server")["redis_version"])
    finally:
        r.close()
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "redis": redis_version,
        "postgres_client": pg.strip(),
    }


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh migrated database ``onhand_bench_<hex>``, dropped afterwards."""
    name = f"onhand_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        await upgrade(url)
        yield url
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def delete_namespace(namespace: str, url: str = REDIS_URL) -> None:
    r = redis.Redis.from_url(url)
    try:
        batch = []
        for key in r.scan_iter(match=f"{namespace}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                r.unlink(*batch)
                batch.clear()
        if batch:
            r.unlink(*batch)
    finally:
        r.close()


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    title: str
    figures: list[Figure] = field(default_factory=list)

    def add(self, *args: object, **kwargs: object) -> Figure:
        fig = Figure(*args, **kwargs)  # type: ignore[arg-type]
        self.figures.append(fig)
        return fig

    def table(self) -> str:
        lines = [
            f"## {self.title}",
            "",
            "| figure | value | target | met | notes |",
            "|---|---|---|---|---|",
        ]
        for f in self.figures:
            met = "" if f.met is None else ("yes" if f.met else "**NO**")
            value = f"{f.value:,.1f} {f.unit}" if f.value == f.value else "n/a"
            lines.append(f"| {f.name} | {value} | {f.target} | {met} | {f.note} |")
        return "\n".join(lines)
