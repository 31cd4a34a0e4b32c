"""HTTP reservations of a base revision against this checkout, interleaved.

    python -m loadtests.bench_http [--base main] [--rounds 6] [--seconds 6] [--workers 1]
                                   [--json FILE]

Figure (c) of ``loadtests.bench`` moves by up to 2x between runs half an hour apart on
the same shared machine (docs/benchmarks.md, "Interleaved rounds"), so two separate
runs cannot tell a change of a few per cent from the machine. Here both revisions run
in one scratch deployment (one Redis namespace, one database migrated by this checkout,
one ledger writer of this checkout), one after the other, alternating which goes first:
per round, ``onhand serve`` of each revision (the base from ``git archive``, its own
``src`` and ``lua``; each loads its own function library), 2 s of warm-up, then wrk
drives ``POST /v1/reservations`` exactly as ``loadtests.bench`` does (``-c64``,
``wrk/reserve.lua``, one hot SKU), and the backlog is drained before the next server.

Printed per round and as medians: reservations/s, p99, API worker CPU per request and
the new / base ratio of each, paired within the round (the pair shares the machine's
state of that minute). Checked: every answer 201, and the units held afterwards match
the 201 answers (give or take the requests wrk cut off). The two revisions must share
the key layout and the schema; the comparison is of the request path, not of data
migrations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.bench import (
    HOT,
    PARTITIONS,
    QUICK,
    WH,
    HttpEnv,
    Processes,
    Run,
    WrkResult,
    http_deployment,
    onhand_libraries,
    reserve_wrk,
    seed_catalog,
    start_server,
)
from loadtests.bench_scripts import REPO, base_tree
from loadtests.common import REDIS_URL, delete_namespace
from loadtests.keyspace import Headroom
from onhand.engine.redis import RedisEngine, connect

__all__ = ["Pair", "Summary", "main", "summarize"]

VERSIONS = ("base", "new")
WARM_UP_S = 2


@dataclass(frozen=True)
class Sample:
    rate: float  # requests/s
    p99_ms: float
    cpu_us: float  # API worker CPU per request
    failures: int  # non-201 answers and socket errors


@dataclass(frozen=True)
class Pair:
    """One round: both revisions, run back to back."""

    base: Sample
    new: Sample


@dataclass(frozen=True)
class Summary:
    base_rate: float  # medians over the rounds
    new_rate: float
    rate_ratios: list[float]  # new / base, per round
    p99_ratios: list[float]
    cpu_ratios: list[float]
    failures: int

    @property
    def rate_ratio(self) -> float:
        return statistics.median(self.rate_ratios)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.cpu_ratios)

    @property
    def p99_ratio(self) -> float:
        return statistics.median(self.p99_ratios)

    @property
    def consistent(self) -> str:
        """Whether every round's rate ratio points the same way."""
        if all(r > 1 for r in self.rate_ratios):
            return "faster in every round"
        if all(r < 1 for r in self.rate_ratios):
            return "slower in every round"
        return "mixed: the rounds disagree"


def summarize(pairs: list[Pair]) -> Summary:
    """Medians and per-round new / base ratios of ``pairs`` (at least one)."""
    if not pairs:
        raise ValueError("no rounds")
    return Summary(
        base_rate=statistics.median(p.base.rate for p in pairs),
        new_rate=statistics.median(p.new.rate for p in pairs),
        rate_ratios=[p.new.rate / p.base.rate for p in pairs],
        p99_ratios=[p.new.p99_ms / p.base.p99_ms for p in pairs],
        cpu_ratios=[p.new.cpu_us / p.base.cpu_us for p in pairs],
        failures=sum(p.base.failures + p.new.failures for p in pairs),
    )


def _sample(result: WrkResult) -> Sample:
    return Sample(result.rate, result.ms("p99"), result.cpu_us, result.failures(("201",)))


def report(pairs: list[Pair], summary: Summary, held_gap: int, slack: int) -> str:
    lines = [
        "| round | base req/s | new req/s | new / base | p99 base / new ms | CPU µs base / new |",
        "|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(pairs, 1):
        lines.append(
            f"| {i} | {p.base.rate:,.0f} | {p.new.rate:,.0f} | {p.new.rate / p.base.rate:.3f} "
            f"| {p.base.p99_ms:.1f} / {p.new.p99_ms:.1f} "
            f"| {p.base.cpu_us:.0f} / {p.new.cpu_us:.0f} |"
        )
    lines += [
        "",
        f"median: base {summary.base_rate:,.0f} req/s, new {summary.new_rate:,.0f} req/s",
        f"new / base, median of the rounds: rate {summary.rate_ratio:.3f} x "
        f"({summary.consistent}; range {min(summary.rate_ratios):.3f} to "
        f"{max(summary.rate_ratios):.3f}), p99 {summary.p99_ratio:.3f} x, "
        f"worker CPU per request {summary.cpu_ratio:.3f} x",
        f"non-201 answers and errors: {summary.failures}; units held - 201 answers: "
        f"{held_gap} (0..{slack}: requests cut off when wrk stops)",
    ]
    return "\n".join(lines)


async def _rounds(
    run: Run, h: HttpEnv, trees: dict[str, Path], opts: argparse.Namespace
) -> list[Pair]:
    pairs: list[Pair] = []
    seeded = False
    for rnd in range(opts.rounds):
        samples: dict[str, Sample] = {}
        for version in VERSIONS if rnd % 2 == 0 else VERSIONS[::-1]:
            env = {**h.env, "PYTHONPATH": str(trees[version] / "src")}
            server = await start_server(run, env, opts.workers)
            try:
                if not seeded:
                    await seed_catalog(server, h.admin, h.checkout)
                    seeded = True
                await reserve_wrk(run, h, server, WARM_UP_S, cpu=False)
                result = await reserve_wrk(run, h, server, opts.seconds)
            finally:
                run.procs.stop(server.proc)
            await h.sampler().drained(60)  # the next server starts from an empty backlog
            samples[version] = _sample(result)
            print(
                f"round {rnd + 1} {version:4s}: {result.rate:8,.0f} req/s, p99 "
                f"{result.ms('p99'):5.1f} ms, {result.cpu_us:5.0f} µs worker CPU",
                flush=True,
            )
        pairs.append(Pair(samples["base"], samples["new"]))
    return pairs


async def compare(opts: argparse.Namespace, base: Path) -> dict[str, Any]:
    """The rounds of ``opts`` with the base revision's tree at ``base``."""
    trees = {"base": base, "new": REPO}
    client = connect(REDIS_URL, max_connections=16)
    libraries = await onhand_libraries(client)
    with tempfile.TemporaryDirectory(prefix="onhand-bench-http-") as tmp:
        run = Run(QUICK, Processes(), Path(tmp))
        run.headroom = Headroom(client, f"hbK{uuid.uuid4().hex[:8]}")
        try:
            async with http_deployment(run, client, "hbH") as h:
                pairs = await _rounds(run, h, trees, opts)
                engine = RedisEngine(client, namespace=h.namespace, partitions=PARTITIONS)
                held = (await engine.stock_level(HOT, WH)).held
        finally:
            run.procs.stop_all()
            delete_namespace(run.headroom.namespace)
            # The libraries the two servers loaded (each revision its own): theirs to
            # remove. (A process that still uses one reloads it on its next call.)
            for name in await onhand_libraries(client) - libraries:
                await client.function_delete(name)
            await client.aclose()
    summary = summarize(pairs)
    slack = run.plan.http_conns * len(h.reserve_runs)
    gap = held - h.reserved_201
    print(report(pairs, summary, gap, slack))
    ok = summary.failures == 0 and 0 <= gap <= slack
    return {
        "base": opts.base,
        "rounds": [asdict(p) for p in pairs],
        "summary": {**asdict(summary), "rate_ratio": summary.rate_ratio},
        "held_minus_201": gap,
        "ok": ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=6, help="measured seconds per server")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    opts = parser.parse_args(argv)
    if opts.rounds < 1 or opts.seconds < 1 or opts.workers < 1:
        parser.error("--rounds, --seconds and --workers must be at least 1")
    if shutil.which("wrk") is None:
        print("bench_http: missing tools: wrk (Debian package wrk)", file=sys.stderr)
        return 2
    try:
        base = base_tree(opts.base)
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.decode(errors="replace").strip()
        print(f"bench_http: cannot export revision {opts.base!r}: {reason}", file=sys.stderr)
        return 2
    print(f"load average before: {os.getloadavg()}", flush=True)
    try:
        result = asyncio.run(compare(opts, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2))
    if not result["ok"]:
        print("bench_http: failures, or units held do not match the 201 answers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
