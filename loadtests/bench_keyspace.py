"""What a doubling of Redis's key table costs reservations, side by side with none.

    python -m loadtests.bench_keyspace [--seconds 3] [--bits 18,20] [--json FILE]

Every reservation adds keys (its record; over HTTP also its Idempotency-Key record), so a
keyspace that grows doubles its hash table now and then, and every command pays for
moving the entries to the new one until the move is done (``loadtests.keyspace``). For
each table size 2^bits, two runs of the same load (``RedisEngine(coalesce=True)
.reserve`` from 256 tasks in this process, one unit of one SKU, for ``--seconds``):

* **doubling**: filler keys bring the keyspace to 1,000 keys below 2^bits, so the run's
  first reservations make the table double and the run carries the move;
* **settled**: right after, on the doubled table once its move is done
  (:meth:`loadtests.keyspace.Headroom.ensure`), with room for all the run adds.

Printed per size: reservations/s and Redis's time per reservation in each run (the
server process's CPU from ``/proc`` when it runs on this machine, else ``INFO
commandstats``' time of its script calls), and doubling / settled. Works in its own
namespaces (the filler's included), removed afterwards; the server keeps the larger
table until Redis shrinks it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from loadtests.bench import RedisMeter
from loadtests.common import REDIS_URL, delete_namespace
from loadtests.keyspace import Headroom
from onhand.domain import MAX_QTY, Line, ReserveRequest
from onhand.engine.redis import RedisEngine, connect
from onhand.errors import OnhandError

CALLERS = 256
RATE_BOUND = 45_000  # reservations/s, above any measured here (loadtests.bench)


@dataclass
class Run:
    bits: int
    kind: str  # "doubling" or "settled"
    keys_before: int
    keys_after: int
    reservations: int
    seconds: float
    redis_us: float  # Redis time per reservation
    measured_by: str

    @property
    def rate(self) -> float:
        return self.reservations / self.seconds


async def load(engine: RedisEngine, seconds: float) -> int:
    line, done = Line("HOT", 1, ("W1",)), 0
    stop = time.monotonic() + seconds

    async def caller(task: int) -> None:
        nonlocal done
        token, i = uuid.uuid4().hex[:8], 0
        while time.monotonic() < stop:
            i += 1
            try:
                await engine.reserve(ReserveRequest(f"{token}.{task}.{i}", (line,), 3_600_000))
            except OnhandError:
                continue
            done += 1

    await asyncio.gather(*(caller(t) for t in range(CALLERS)))
    return done


async def measured(kind: str, bits: int, engine: RedisEngine, seconds: float) -> Run:
    client = engine.client
    keys_before = await client.dbsize()
    started = time.perf_counter()
    async with RedisMeter(client) as meter:  # the bench's: process CPU if local
        done = await load(engine, seconds)
    wall, use = time.perf_counter() - started, meter.result()
    by = "process CPU" if use.cpu_s is not None else "script time (commandstats)"
    used_s = use.cpu_s if use.cpu_s is not None else use.usec / 1e6
    keys_after = await client.dbsize()
    run = Run(bits, kind, keys_before, keys_after, done, wall, 1e6 * used_s / max(1, done), by)
    print(
        f"  2^{bits} {kind:9s} keys {run.keys_before:>10,} → {run.keys_after:>10,}:"
        f" {run.rate:>8,.0f} reservations/s, Redis {run.redis_us:5.1f} µs each",
        flush=True,
    )
    return run


async def bench(bits_list: list[int], seconds: float, url: str = REDIS_URL) -> list[Run]:
    """The runs, doubling then settled for each size in ``bits_list`` (module docstring);
    a size the keyspace has passed already is skipped."""
    namespace = f"hbD{uuid.uuid4().hex[:8]}"
    client = connect(url, max_connections=CALLERS + 16)
    headroom = Headroom(client, f"hbE{uuid.uuid4().hex[:8]}")
    runs: list[Run] = []
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=16, coalesce=True)
        await engine.mark_ready(0)
        await engine.receive("HOT", "W1", MAX_QTY)
        await load(engine, 1.0)  # connections, the function library
        for bits in sorted(bits_list):
            if await client.dbsize() > (1 << bits) - 1_000:
                print(f"  2^{bits}: the keyspace is past it already; skipped", flush=True)
                continue
            await headroom.add((1 << bits) - 1_000 - await client.dbsize())
            runs.append(await measured("doubling", bits, engine, seconds))
            if not await headroom.ensure(round(RATE_BOUND * seconds), 0):
                await headroom.settle()  # (ensure settles what it fills)
            runs.append(await measured("settled", bits, engine, seconds))
    finally:
        await client.aclose()
        delete_namespace(namespace, url)
        delete_namespace(headroom.namespace, url)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument(
        "--bits",
        default="18,20",
        help="table sizes, as powers of two (a settled run may double the table once more:"
        " sizes one apart skip the second)",
    )
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    print(f"Redis {REDIS_URL}, {CALLERS} callers, {args.seconds:g} s per run")
    runs = asyncio.run(bench([int(b) for b in args.bits.split(",")], args.seconds))
    print("\n| table | doubling: reservations/s | µs | settled: reservations/s | µs | ratio |")
    print("|---|---|---|---|---|---|")
    for d, s in zip(runs[::2], runs[1::2], strict=True):
        print(
            f"| 2^{d.bits} | {d.rate:,.0f} | {d.redis_us:.1f} | {s.rate:,.0f} | {s.redis_us:.1f}"
            f" | {d.redis_us / s.redis_us:.2f} x time, {d.rate / s.rate:.2f} x rate |"
        )
    if runs:
        print(f"\nRedis time per reservation: {runs[0].measured_by}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**asdict(r), "rate": r.rate} for r in runs], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
