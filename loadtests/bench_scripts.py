"""Side-by-side cost of a hot-path Lua script: a base revision against this checkout.

    python -m loadtests.bench_scripts [--base main] [--rounds 4] [-n 50000]
    python -m loadtests.bench_scripts --engine-seconds 4 [--rounds 3]

Both versions of the ``reserve`` script are assembled exactly as their own revision
assembles them (the base revision's ``lua/`` and ``onhand/engine/scripts.py`` are taken
from ``git archive``): a revision with a function library (``library_source``) is
loaded with ``FUNCTION LOAD`` and called with FCALL, an older one's ``script_source``
with ``SCRIPT LOAD`` and EVALSHA (the trivial baseline is an EVALSHA),
and driven with the same KEYS and ARGV (those ``RedisEngine.reserve`` of this checkout
builds: one unit of one SKU with 10⁹ units in one warehouse, a new id per call) by
``redis-benchmark -c 50 -P 16``, interleaved: each round runs base, new and a trivial
script with the same KEYS/ARGV, alternating which version goes first. Each version
works in its own namespace (partitions opened with ``mark_ready``), removed
afterwards. Printed per round and as medians: calls/s, µs per call inside Redis
(``INFO commandstats``: wall time, so it includes time the Redis thread was preempted
on a busy box), CPU µs per call of the Redis process (``/proc``, when the server is
local: the steadier figure on a shared box) and the new/base ratios; the load average
before and after.

Verified: the units held in each namespace equal the calls that version made, give or
take the ids that repeated by chance (answered REPLAY) and the requests redis-benchmark
sends past ``-n`` (it completes whole pipelines).

``--engine-seconds S`` compares the engine instead (figure b of ``loadtests.bench``):
per round, one process of each revision (the base from ``git archive``, its own
``src``) runs ``RedisEngine(coalesce=True).reserve`` from 256 tasks for S seconds
after 1 s of warm-up, in its own namespace; printed: reservations/s, CPU of that
process per reservation, failures, and whether units held = successful calls.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import csv
import importlib.util
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path
from types import ModuleType

import onhand.engine.scripts as new_scripts
from loadtests.bench import (
    HOT,
    PARTITIONS,
    RAND_RANGE,
    WH,
    _comm,
    cpu_seconds,
    redis_benchmark_cmd,
    reserve_call,
)
from loadtests.common import REDIS_URL, delete_namespace
from onhand.domain import MAX_QTY
from onhand.engine.redis import RedisEngine, connect

REPO = Path(__file__).resolve().parents[1]


def base_tree(ref: str) -> Path:
    """``lua/`` and ``src/`` of revision ``ref`` in a new temporary directory, removed
    when this process exits (or earlier by the caller)."""
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "lua", "src"],
        capture_output=True,
        check=True,
    ).stdout
    root = Path(tempfile.mkdtemp(prefix="onhand-base-"))
    atexit.register(shutil.rmtree, root, True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(root, filter="data")
    return root


def base_scripts(ref: str) -> ModuleType:
    """``onhand.engine.scripts`` of revision ``ref``, reading its own ``lua/`` files."""
    root = base_tree(ref)
    path = root / "src" / "onhand" / "engine" / "scripts.py"
    spec = importlib.util.spec_from_file_location(f"onhand_base_scripts_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reserve_command(scripts: ModuleType, client: object) -> tuple[list[str], str | None]:
    """How ``scripts`` (a revision's ``onhand.engine.scripts``) runs ``reserve``: FCALL of
    its function library if it has one (loaded here), else EVALSHA of its EVAL script;
    and the name of the library if this call loaded it (the caller deletes it after)."""
    import redis

    assert isinstance(client, redis.Redis)
    if hasattr(scripts, "library_source"):
        library = scripts.library_source()
        loaded: str | None = library.name
        try:
            client.execute_command("FUNCTION", "LOAD", library.source)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            if "already exists" not in str(exc):
                raise
            loaded = None  # someone else's: theirs to keep
        return ["FCALL", library.functions["reserve"]], loaded
    return ["EVALSHA", client.script_load(scripts.script_source("reserve"))], None


def redis_benchmark(command: list[str], keys: list[str], argv: list[str], n: int) -> float:
    cmd = redis_benchmark_cmd(command, keys, argv, n)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [r for r in csv.reader(out.splitlines()) if r and r[0] != "test"]
    return float(rows[-1][1])


def evalsha_stats(client: object, pid: int | None) -> tuple[int, int, float]:
    """Script calls (FCALL + EVALSHA), their µs (INFO commandstats) and the Redis
    process's CPU seconds
    (utime + stime; 0 when the server is not a local process)."""
    import redis

    assert isinstance(client, redis.Redis)
    info = client.info("commandstats")
    calls = sum(int(info.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("fcall", "evalsha"))
    usec = sum(int(info.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("fcall", "evalsha"))
    cpu = cpu_seconds([pid]) if pid is not None else 0.0
    return calls, usec, cpu


async def prepare(namespace: str, rounds: int) -> list[tuple[list[str], list[str]]]:
    """Open the namespace's partitions, stock HOT, and capture one (KEYS, ARGV) per round.

    Each round's ids get their own prefix: redis-benchmark may draw the same random
    sequence in two runs, and a repeated id would answer REPLAY (a cheaper path)."""
    client = connect(REDIS_URL)
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=PARTITIONS)
        await engine.mark_ready(0)
        await engine.receive(HOT, WH, MAX_QTY)
        return [await reserve_call(client, namespace, f"a{r}.__rand_int__") for r in range(rounds)]
    finally:
        await client.aclose()


async def held(namespace: str) -> int:
    client = connect(REDIS_URL)
    try:
        engine = RedisEngine(client, namespace=namespace, partitions=PARTITIONS)
        return (await engine.stock_level(HOT, WH)).held
    finally:
        await client.aclose()


ENGINE_LOAD = """
import asyncio, json, os, sys, time, uuid
from onhand.domain import MAX_QTY, Line, ReserveRequest
from onhand.engine.redis import RedisEngine, connect
from onhand.errors import OnhandError

async def main(url, ns, seconds):
    client = connect(url, max_connections=300)
    engine = RedisEngine(client, namespace=ns, partitions=16, coalesce=True)
    await engine.mark_ready(0)
    await engine.receive("HOT", "W1", MAX_QTY)
    line, ok, failed = Line("HOT", 1, ("W1",)), [0], [0]

    async def caller(task, stop, count):
        token, i = uuid.uuid4().hex[:8], 0
        while time.monotonic() < stop:
            i += 1
            try:
                await engine.reserve(ReserveRequest(f"{token}.{task}.{i}", (line,), 3600000))
            except OnhandError:
                failed[0] += 1
                continue
            ok[0] += count

    stop = time.monotonic() + 1.0
    await asyncio.gather(*(caller(t, stop, 0) for t in range(256)))
    warm = (await engine.stock_level("HOT", "W1")).held
    cpu, t0 = time.process_time(), time.perf_counter()
    stop = time.monotonic() + seconds
    await asyncio.gather(*(caller(t, stop, 1) for t in range(256)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    held = (await engine.stock_level("HOT", "W1")).held
    await client.aclose()
    print(json.dumps({"rate": ok[0] / wall, "cpu_us": cpu / max(1, ok[0]) * 1e6,
                      "failed": failed[0], "held_ok": held - warm == ok[0]}))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


def engine_rounds(opts: argparse.Namespace) -> None:
    import json

    trees = {"base": base_tree(opts.base) / "src", "new": REPO / "src"}
    tag = uuid.uuid4().hex[:6]
    rates: dict[str, list[float]] = {"base": [], "new": []}
    cpus: dict[str, list[float]] = {"base": [], "new": []}
    print(f"load average before: {os.getloadavg()}", flush=True)
    try:
        for rnd in range(opts.rounds):
            order = ["base", "new"] if rnd % 2 == 0 else ["new", "base"]
            for v in order:
                env = {**os.environ, "PYTHONPATH": str(trees[v])}
                ns = f"hbE{tag}{v}{rnd}"
                out = subprocess.run(
                    [sys.executable, "-c", ENGINE_LOAD, REDIS_URL, ns, str(opts.engine_seconds)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=120 + 2 * opts.engine_seconds,
                    check=True,
                ).stdout
                delete_namespace(ns)
                r = json.loads(out)
                print(
                    f"round {rnd + 1} {v:4s}: {r['rate']:8,.0f} reservations/s, "
                    f"{r['cpu_us']:5.1f} µs CPU each, {r['failed']} failed, "
                    f"held = successes: {r['held_ok']}",
                    flush=True,
                )
                if r["failed"] or not r["held_ok"]:
                    sys.exit(f"{v}: failures or units held != successes")
                rates[v].append(r["rate"])
                cpus[v].append(r["cpu_us"])
    finally:
        r = __import__("redis").Redis.from_url(REDIS_URL)
        for key in r.scan_iter(match=f"hbE{tag}*", count=1000):
            r.unlink(key)
        r.close()
    rate = [n / b for b, n in zip(rates["base"], rates["new"], strict=True)]
    cpu = [n / b for b, n in zip(cpus["base"], cpus["new"], strict=True)]
    print(
        f"median base {statistics.median(rates['base']):,.0f}/s "
        f"{statistics.median(cpus['base']):.1f} µs CPU; new "
        f"{statistics.median(rates['new']):,.0f}/s {statistics.median(cpus['new']):.1f} µs CPU"
    )
    print(
        f"new/base: rate {statistics.median(rate):.2f}x (rounds "
        f"{', '.join(f'{x:.2f}' for x in rate)}); CPU per reservation {statistics.median(cpu):.2f}x"
    )
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("-n", type=int, default=50_000, help="calls per run")
    parser.add_argument("--engine-seconds", type=float, default=0, help="compare the engine")
    opts = parser.parse_args()
    if opts.engine_seconds:
        engine_rounds(opts)
        return

    import redis

    sync = redis.Redis.from_url(REDIS_URL)
    commands: dict[str, list[str]] = {}
    libraries: list[str] = []  # loaded by this run: deleted at the end
    for version, scripts in (("base", base_scripts(opts.base)), ("new", new_scripts)):
        commands[version], library = reserve_command(scripts, sync)
        libraries += [library] if library else []
    tag = uuid.uuid4().hex[:6]
    spaces = {v: f"hbS{tag}{v}" for v in commands}
    calls = dict.fromkeys(commands, 0)
    results: dict[str, list[tuple[float, float, float]]] = {"base": [], "new": [], "trivial": []}
    server_pid = int(sync.info("server")["process_id"])
    pid = server_pid if _comm(server_pid) == "redis-server" else None
    print(f"load average before: {os.getloadavg()}", flush=True)
    print(f"base {opts.base}: {' '.join(commands['base'])}; new: {' '.join(commands['new'])}")
    try:
        argsets = {v: asyncio.run(prepare(ns, opts.rounds)) for v, ns in spaces.items()}
        commands["trivial"] = ["EVALSHA", sync.script_load("return {'OK', ARGV[1]}")]
        argsets["trivial"] = argsets["new"]
        # redis-benchmark may send a few requests past -n (whole pipelines).
        overshoot = 50 * 16
        for rnd in range(opts.rounds):
            order = ["base", "new", "trivial"] if rnd % 2 == 0 else ["new", "base", "trivial"]
            for v in order:
                c0, u0, t0 = evalsha_stats(sync, pid)
                rps = redis_benchmark(commands[v], *argsets[v][rnd], opts.n)
                c1, u1, t1 = evalsha_stats(sync, pid)
                calls_in = max(1, c1 - c0)
                results[v].append((rps, (u1 - u0) / calls_in, (t1 - t0) * 1e6 / calls_in))
                if v in calls:
                    calls[v] += opts.n
            b, n = results["base"][-1], results["new"][-1]
            print(
                f"round {rnd + 1}: base {b[0]:7,.0f}/s {b[1]:5.1f} µs {b[2]:5.1f} cpu | "
                f"new {n[0]:7,.0f}/s {n[1]:5.1f} µs {n[2]:5.1f} cpu | "
                f"trivial {results['trivial'][-1][0]:8,.0f}/s | new/base rate "
                f"{n[0] / b[0]:.2f}x, µs {n[1] / b[1]:.2f}x, cpu {n[2] / max(b[2], 1e-9):.2f}x",
                flush=True,
            )
        for v, ns in spaces.items():
            units = asyncio.run(held(ns))
            dupes = calls[v] ** 2 / (2 * RAND_RANGE)
            ok = calls[v] - max(10, 5 * dupes) <= units <= calls[v] + overshoot * opts.rounds
            print(f"{v}: {units:,} units held for {calls[v]:,} calls ({'ok' if ok else 'BAD'})")
            if not ok:
                sys.exit(f"{v}: replies not as expected")
    finally:
        for ns in spaces.values():
            delete_namespace(ns)
        for library in libraries:
            sync.execute_command("FUNCTION", "DELETE", library)  # type: ignore[no-untyped-call]
        sync.close()

    def med(v: str, i: int) -> float:
        return statistics.median(r[i] for r in results[v])

    pairs = list(zip(results["base"], results["new"], strict=True))
    rate = [n[0] / b[0] for b, n in pairs]
    us = [n[1] / b[1] for b, n in pairs]
    cpu = [n[2] / max(b[2], 1e-9) for b, n in pairs]
    for v in results:
        print(
            f"median {v}: {med(v, 0):,.0f} calls/s, {med(v, 1):.1f} µs/call in Redis "
            f"(commandstats), {med(v, 2):.1f} µs/call of Redis process CPU"
        )
    print(
        f"new/base (median of the rounds' ratios): rate {statistics.median(rate):.2f}x "
        f"(rounds {', '.join(f'{x:.2f}' for x in rate)}); µs per call "
        f"{statistics.median(us):.2f}x; Redis CPU per call {statistics.median(cpu):.2f}x"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
