"""What one HTTP reservation costs inside Redis, by the number of orders per call.

    python -m loadtests.bench_hold [--orders 1,8,16,25,32] [-n 4000] [--rounds 3]
                                   [--callgrind]

The checkout's one script call (``lua/hold.lua``, KEYS and ARGV exactly as the API sends
them: ``loadtests.bench.hold_call``, one unit of one hot SKU, a new Idempotency-Key
record, order and reservation each time) is sent ``n`` times per batch size, as the
coalescer sends concurrent ones: one ``hold`` call per order, or ``hold_many`` calls of
k orders (built by the coalescer's own ``batch_commands``). Rounds rotate the batch sizes'
order. Measured per size: Redis's time per hold (``INFO commandstats``: wall time in the
call, so it includes time the Redis thread was preempted) and, when the server runs on
this machine, the Redis process's CPU per hold; printed as medians over the rounds,
next to the single-call figure of the same run, with the least-squares split of a call's
time into a fixed part and a part per order.

Run it against a Redis with nothing else on it (``ONHAND_BENCH_REDIS_URL``) for
figures that compare. Under ``valgrind --tool=callgrind`` that server's instruction
counts say where the time goes: ``--callgrind`` zeroes its counters after the warm-up
and dumps them at the end (``callgrind_control``), so the dump holds the measured calls
only (docs/benchmarks.md, "Redis's time per hold").

Verified: every order is answered ``HELD`` and the units held equal the holds sent.
Works in its own namespace (removed afterwards) and removes the function library if it
loaded it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from loadtests.bench import HOT, PARTITIONS, WH, RedisMeter, hold_call, onhand_libraries
from loadtests.common import REDIS_URL, delete_namespace, fixed_and_per_unit
from loadtests.keyspace import Headroom
from onhand.domain import MAX_QTY
from onhand.engine.coalesce import batch_commands
from onhand.engine.redis import RedisEngine, connect
from onhand.engine.scripts import ScriptFunction, Scripts

__all__ = ["Point", "fit", "main", "report"]

PLACEHOLDER = "__rand_int__"


@dataclass(frozen=True)
class Point:
    """One batch size's medians over the rounds."""

    orders: int  # per call
    usec_per_hold: float  # INFO commandstats
    cpu_us_per_hold: float | None  # the Redis process, when local


def fit(points: Sequence[Point]) -> tuple[float, float]:
    """Least-squares ``call time = fixed + per_order * orders`` over ``points`` (at
    least two batch sizes): ``(fixed, per_order)`` in µs."""
    return fixed_and_per_unit([(p.orders, p.usec_per_hold) for p in points])


def report(points: Sequence[Point]) -> str:
    base = next((p for p in points if p.orders == 1), None)
    lines = [
        "| orders per call | µs per hold (commandstats) | Redis CPU µs per hold | vs 1 per call |",
        "|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: p.orders):
        cpu = "n/a" if p.cpu_us_per_hold is None else f"{p.cpu_us_per_hold:.1f}"
        ratio = f"{p.usec_per_hold / base.usec_per_hold:.2f} x" if base else ""
        lines.append(f"| {p.orders} | {p.usec_per_hold:.1f} | {cpu} | {ratio} |")
    if len({p.orders for p in points}) >= 2:
        fixed, per_order = fit(points)
        lines.append(
            f"\na call's time = {fixed:.1f} µs + {per_order:.1f} µs per order (least squares)"
        )
    return "\n".join(lines)


class HoldLoad:
    """Holds of one namespace, each with a new id, sent ``orders`` to a call."""

    def __init__(self, client: Redis, hold: ScriptFunction, keys: list[str], args: list[str]):
        self.client, self.hold, self.keys, self.args = client, hold, keys, args
        self.sent = 0
        self.failures = 0
        self._next = 10**11  # a 12-digit number, as redis-benchmark's __rand_int__ gives

    def _order(self) -> tuple[list[str], list[str]]:
        self._next += 1
        n = str(self._next)
        return (
            [k.replace(PLACEHOLDER, n) for k in self.keys],
            [a.replace(PLACEHOLDER, n) for a in self.args],
        )

    async def call(self, orders: int) -> None:
        batch: list[Any] = [(self.hold, *self._order(), None) for _ in range(orders)]
        (command,) = batch_commands(batch)
        keys, args = command.keys, command.args
        reply = await self.client.execute_command(  # type: ignore[no-untyped-call]
            "FCALL", command.function, len(keys), *keys, *args
        )
        replies = reply[2:] if command.batched else [reply]
        self.sent += orders
        self.failures += sum(1 for r in replies if not (isinstance(r, list) and r[0] == b"HELD"))


async def _callgrind(action: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", action, stdout=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"callgrind_control {action} failed: is Redis under callgrind?")


async def measure(opts: argparse.Namespace) -> tuple[list[Point], int, int]:
    """Medians per batch size; the failures and units held minus holds sent."""
    client = connect(REDIS_URL)
    before = await onhand_libraries(client)
    namespace = f"hbW{uuid.uuid4().hex[:8]}"
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=PARTITIONS)
        await engine.mark_ready(0)
        await engine.receive(HOT, WH, MAX_QTY)
        scripts = Scripts(client)
        await scripts.load()
        keys, args = await hold_call(client, namespace)
        load = HoldLoad(client, scripts["hold"], keys, args)
        total = opts.n * len(opts.orders) * (opts.rounds + 1)
        # a reservation header and an Idempotency-Key record (with a TTL) per hold
        await Headroom(client, namespace).ensure(2 * total, total)
        samples: dict[int, list[tuple[float, float | None]]] = {m: [] for m in opts.orders}
        for m in opts.orders:  # warm-up: the library, the keys' first writes
            for _ in range(max(1, 200 // m)):
                await load.call(m)
        if opts.callgrind:
            await _callgrind("--zero")
        for rnd in range(opts.rounds):
            shift = rnd % len(opts.orders)
            for m in [*opts.orders[shift:], *opts.orders[:shift]]:
                async with RedisMeter(client) as meter:
                    for _ in range(max(1, opts.n // m)):
                        await load.call(m)
                use = meter.result()
                holds = max(1, opts.n // m) * m
                cpu = None if use.cpu_s is None else 1e6 * use.cpu_s / holds
                samples[m].append((use.usec / holds, cpu))
                print(f"round {rnd + 1}, {m:3d} per call: {use.usec / holds:6.1f} µs per hold")
        if opts.callgrind:
            await _callgrind("--dump")
        held = (await engine.stock_level(HOT, WH)).held
        points = []
        for m in opts.orders:
            cpus = [c for _, c in samples[m] if c is not None]
            usec = statistics.median(u for u, _ in samples[m])
            points.append(Point(m, usec, statistics.median(cpus) if cpus else None))
        return points, load.failures, held - load.sent
    finally:
        delete_namespace(namespace)
        for name in await onhand_libraries(client) - before:
            await client.function_delete(name)
        await client.aclose()


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",")]
    if not sizes or any(not 1 <= m <= 256 for m in sizes) or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError("distinct batch sizes from 1 to 256")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=_sizes, default=[1, 8, 16, 25, 32])
    parser.add_argument("-n", type=int, default=4000, help="holds per batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--callgrind", action="store_true", help="zero/dump callgrind's counters (module doc)"
    )
    opts = parser.parse_args(argv)
    if opts.n < 1 or opts.rounds < 1:
        parser.error("-n and --rounds must be at least 1")
    points, failures, gap = asyncio.run(measure(opts))
    print(report(points))
    print(f"orders not HELD: {failures}; units held - holds sent: {gap}")
    return 0 if failures == 0 and gap == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
