"""Room in Redis's key tables, so that no benchmark run pays for a doubling.

Redis keeps the keys of a database in one hash table and the keys with a TTL in a
second one. A table doubles when an insert finds it full (count = size, a power of
two), and then every entry moves to the new table, a bucket at a time with each
command that touches it ("incremental rehashing"). While that lasts every command
pays for it: on the benchmark machine Redis's time per reservation went from ≈ 31 to
≈ 55 µs for ≈ 5 s while the keyspace's table went from 2^20 to 2^21 entries
(docs/benchmarks.md, "Keyspace doublings"). A reservation over HTTP adds two keys (its
record and its Idempotency-Key record, which has a TTL), so each run of a benchmark
starts at another point of that cycle: one run pays for a doubling, the next does not,
and their ratios say nothing about the code.

:meth:`Headroom.ensure` is called before each run with the most keys the run can add.
If the run could fill a table, it first adds filler keys (empty strings with a TTL, in
a namespace of their own) until both tables have just doubled, then drives the move
to its end with cheap lookups, so the run starts on settled tables with room for what
it adds. The benchmark deletes the filler afterwards (it expires by itself if the
benchmark is killed). Sizes are computed from ``INFO keyspace``: a table is at
least the smallest power of two that holds its keys (Redis grows a table before it
overflows and shrinks it only when less than a tenth is used), so a table found larger
than that only has more room.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

__all__ = ["Headroom", "filler_needed", "table_size"]

MIN_TABLE = 4
"""A new table's size (Redis's ``DICT_HT_INITIAL_SIZE``)."""
FILLER_TTL_MS = 3_600_000
FILL_CHUNK = 50_000
"""Keys written per script call (≈ 50 ms of Redis time: other clients are not held up)."""
STEP_CHUNK = 100_000

_FILL = """
local prefix, first, last, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
for i = first, last do redis.call('SET', prefix .. i, '', 'PX', ttl) end
return last - first + 1
"""
# Each lookup of a key with a TTL moves one bucket of each table being rehashed (the
# keys' and the TTLs'), so a table of n buckets is settled after at most n lookups.
_STEP = "for _ = 1, tonumber(ARGV[1]) do redis.call('EXISTS', KEYS[1]) end return 1"


def table_size(count: int) -> int:
    """The smallest table (a power of two, at least :data:`MIN_TABLE`) holding ``count``."""
    size = MIN_TABLE
    while size < count:
        size *= 2
    return size


def _room(count: int, growth: int) -> bool:
    """Can ``growth`` keys be added to ``count`` without the table doubling?"""
    return count + growth <= table_size(count)


def filler_needed(keys: int, volatile: int, growth: int, volatile_growth: int) -> int:
    """How many filler keys (with a TTL) make room for a run adding ``growth`` keys, of
    which ``volatile_growth`` with a TTL, to a database of ``keys`` keys (``volatile`` of
    them with a TTL): 0 if both tables have that room already, else the fewest that leave
    one of them just past a power of two and both with room."""
    if _room(keys, growth) and _room(volatile, volatile_growth):
        return 0
    candidates = []
    size = MIN_TABLE
    while size <= 2 * (keys + growth + volatile_growth) + MIN_TABLE:
        for count in (keys, volatile):
            if size + 1 > count:
                candidates.append(size + 1 - count)
        size *= 2
    return min(
        n for n in candidates if _room(keys + n, growth) and _room(volatile + n, volatile_growth)
    )


@dataclass
class Headroom:
    """Filler keys under ``namespace`` on the database of ``client`` (module docstring)."""

    client: Redis
    namespace: str
    added: int = 0
    log: list[str] = field(default_factory=list)

    async def counts(self) -> tuple[int, int]:
        """(keys, keys with a TTL) of the client's database."""
        db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        info = await self.client.info("keyspace")
        entry = info.get(f"db{db}") or {}
        return int(entry.get("keys", 0)), int(entry.get("expires", 0))

    async def ensure(self, growth: int, volatile_growth: int) -> int:
        """Make room for a run adding at most ``growth`` keys (``volatile_growth`` of them
        with a TTL); returns the number of filler keys added (0: there was room)."""
        keys, volatile = await self.counts()
        n = filler_needed(keys, volatile, growth, volatile_growth)
        if n == 0:
            return 0
        await self.add(n)
        await self.settle()
        self.log.append(
            f"{n:,} filler keys: {keys:,} → {keys + n:,} keys, {volatile + n:,} with a TTL"
        )
        return n

    async def add(self, n: int) -> None:
        """``n`` more filler keys (empty strings with a TTL)."""
        first = self.added + 1
        for start in range(first, first + n, FILL_CHUNK):
            last = min(start + FILL_CHUNK, first + n) - 1
            await self.client.eval(_FILL, 0, self._prefix, start, last, FILLER_TTL_MS)
        self.added += max(0, n)

    async def settle(self) -> None:
        """Drive any move to a doubled table to its end: as many lookups of a filler key
        as the larger table has buckets (at least one filler key must exist)."""
        steps = table_size((await self.counts())[0])
        for done in range(0, steps, STEP_CHUNK):
            await self.client.eval(_STEP, 1, f"{self._prefix}1", min(STEP_CHUNK, steps - done))

    @property
    def _prefix(self) -> str:
        return f"{self.namespace}:fill:"
