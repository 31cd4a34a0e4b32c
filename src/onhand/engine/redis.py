"""The Redis engine: every stock change is one Lua script, run atomically in Redis.

Python validates arguments (as the scripts do again), builds every key through
:class:`onhand.keys.Keys`, calls the script and turns its reply code into a result or
an :mod:`onhand.errors` exception. Python never reads a counter to write it back.

Retries: Redis errors are translated into :class:`EngineUnavailable` at this boundary.
Operations whose repetition is harmless (``reserve`` by its id, the reservation
transitions, ``expire_due``, ``set_policy``, ``set_safety_stock``) are retried here once
after a connection error or timeout, since the first attempt may or may not have run;
``receive``, ``adjust`` and ``transfer`` are not (a retry could apply them twice) and
surface the error for the caller's own idempotency layer. Build the client with
:func:`connect` so that redis-py does not retry them blindly either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from onhand.domain import (
    ADJUST_REASONS,
    MAX_QTY,
    MAX_STOCK,
    MAX_TTL_MS,
    Allocation,
    Reservation,
    ReservationStatus,
    ReserveRequest,
    SkuAvailability,
    SkuPolicy,
    StockLevel,
    check_id,
    check_int,
    check_text,
)
from onhand.engine.base import DEFAULT_MAX_HOLD_LIFETIME_MS, StockEngine
from onhand.engine.coalesce import Coalescer
from onhand.engine.scripts import Scripts
from onhand.engine.snapshot import read_events, read_state
from onhand.errors import (
    EngineFault,
    EngineNotReady,
    EngineUnavailable,
    IdempotencyConflict,
    InsufficientStock,
    InvalidInput,
    InvalidTransition,
    LineLimitExceeded,
    NotEnoughOnHand,
    OnhandError,
    ReservationNotFound,
    Shortfall,
    StockLimitExceeded,
    VersionConflict,
)
from onhand.events import Event
from onhand.keys import Keys, SkuKeys
from onhand.state import State

__all__ = ["DEFAULT_RETENTION_MS", "Confirmation", "RedisEngine", "StreamEvent", "connect"]

DEFAULT_RETENTION_MS = 24 * 60 * 60 * 1000
"""Resolved reservations are kept this long (24 h) so repeats stay idempotent."""
_OK = ("OK", "REPLAY")
_SKU_KEYS_MAX = 65_536
_READ_MEMO_MAX = 16_384
"""SKUs whose last-read levels and policy a read may reuse (cleared when full)."""
RUN_ID_TTL_S = 1.0
"""Reads trust a cached server run_id this long (writes check the live one)."""


class Confirmation(NamedTuple):
    """What :meth:`RedisEngine.confirm_with_events` returns."""

    reservation: Reservation
    events: list[StreamEvent]
    fingerprint: str
    max_deadline_ms: int


class StreamEvent(NamedTuple):
    """An event as appended: its partition, stream entry id (``ms-seq``) and content."""

    partition: int
    stream_id: str
    event: Event


def connect(url: str, **kwargs: object) -> Redis:
    """A client for the engine: no blind retries (the engine retries what is safe)."""
    return Redis.from_url(url, retry=Retry(NoBackoff(), 0), **kwargs)  # type: ignore[arg-type]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _level(sku: str, warehouse: str, values: Sequence[str]) -> StockLevel:
    return StockLevel(
        sku,
        warehouse,
        int(values[0]),
        int(values[1]),
        int(values[2]),
        int(values[3]),
        int(values[4]),
        values[5] == "1",
    )


_POLICY_FIELDS = ("bo", "po", "prel", "rp", "rq", "lt", "mlq")
_POLICY_DEFAULTS = (0, 0, 0, 0, 0, 0, MAX_QTY)
_RECORD_FIELDS = ("on", "he", "co", "ss", "v", "low")
_SKU_READ_FIELDS = (*_POLICY_FIELDS, "bey")
_READ_ATTEMPTS = 4
"""Reads of a bulk availability call at most (a warehouse new to a SKU repeats it)."""


class _SkuRead(NamedTuple):
    """How an availability read asks for one SKU: the warehouses the engine last saw in
    its set, the keys (SKU hash, warehouse set, those records) and ``read.lua``'s plan
    letters for them. Built once per SKU and set, not on every read."""

    warehouses: tuple[str, ...]
    keys: tuple[str, ...]
    plan: str

    @classmethod
    def of(cls, sk: SkuKeys, warehouses: tuple[str, ...]) -> _SkuRead:
        records = tuple([sk.stock_head + wh for wh in warehouses])
        return cls(warehouses, (sk.sku, sk.warehouses, *records), "Hs" + "h" * len(warehouses))


class _SkuDecoded(NamedTuple):
    """What one SKU's part of a read reply (``raw``, asked for by ``read``) decoded to."""

    read: _SkuRead
    raw: list[str]
    levels: tuple[StockLevel, ...]
    policy: SkuPolicy
    beyond: int


class RedisEngine(StockEngine):
    """:class:`StockEngine` over Redis. The script library is built at construction (no
    I/O) and loaded into Redis by the first call that finds it missing.

    ``clock``: ``None`` (production) makes every script read the Redis server clock;
    a :class:`~onhand.engine.base.ManualClock` fixes the time instead (tests only).
    ``coalesce``: send concurrent callers' script calls as shared pipelines
    (:mod:`onhand.engine.coalesce`): one round trip for many callers under load.
    """

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str = "onhand",
        partitions: int = 16,
        clock: Callable[[], int] | None = None,
        max_hold_lifetime_ms: int = DEFAULT_MAX_HOLD_LIFETIME_MS,
        retention_ms: int = DEFAULT_RETENTION_MS,
        coalesce: bool = False,
    ) -> None:
        self.client = client
        self._coalescer = Coalescer(client) if coalesce else None
        self.keys = Keys(namespace, partitions)
        self._scripts = Scripts(client)
        self._clock = clock
        self._max_lifetime_ms = check_int(
            "max_hold_lifetime_ms", max_hold_lifetime_ms, 1, MAX_STOCK
        )
        self._retention = str(check_int("retention_ms", retention_ms, 1, MAX_STOCK))
        self._run_id: str | None = None
        self._run_id_checked = 0.0
        self._sku_keys_memo: dict[str, SkuKeys] = {}
        self._policy_memo: dict[tuple[str, ...], SkuPolicy] = {}
        self._sku_reads: dict[str, _SkuRead] = {}
        self._read_memo: dict[str, _SkuDecoded] = {}

    # -- calling scripts -----------------------------------------------------------------
    def _now_arg(self) -> str:
        return "0" if self._clock is None else str(self._clock())

    async def _run(
        self, name: str, keys: list[str], args: list[str], *, retry: bool
    ) -> tuple[str, int, list[str], bool]:
        """Run a script; returns (code, at_ms, payload, retried)."""
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                script, argv = self._scripts[name], [self._now_arg(), *args]
                if self._coalescer is not None:
                    reply = await self._coalescer.call(script, keys, argv)
                else:
                    reply = await script(keys=keys, args=argv)
                break
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if attempt + 1 == attempts:
                    raise EngineUnavailable(f"{name}: {exc}") from exc
            except OutOfMemoryError as exc:
                # A writing function (no allow-oom flag) is refused before it starts.
                raise EngineUnavailable(f"{name}: Redis is out of memory: {exc}") from exc
            except ResponseError as exc:
                if "WRONGTYPE" in str(exc):
                    raise EngineFault(f"{name}: {exc}") from exc
                raise EngineUnavailable(f"{name}: {exc}") from exc
            except RedisError as exc:
                raise EngineUnavailable(f"{name}: {exc}") from exc
        values = [_text(v) for v in reply]
        code, at_ms = values[0], int(values[1])
        if code == "BADARG":
            raise InvalidInput(f"argv[{values[2]}]", "rejected by the script", at_ms=at_ms)
        if code == "NOTREADY":
            raise EngineNotReady(f"{name}: Redis is fenced; retry later", at_ms=at_ms)
        if code in ("WRONGTYPE", "CORRUPT"):
            raise EngineFault(
                f"{name}: a key has an unexpected type or content; nothing changed", at_ms=at_ms
            )
        return code, at_ms, values[2:], attempt > 0

    def _record_args(self, sku: str, warehouse: str) -> list[str]:
        k = self.keys
        return [
            k.stock(sku, warehouse),
            k.sku(sku),
            k.warehouses(sku),
            k.sku_stream(sku),
            k.sku_ready(sku),
        ]

    async def _stock_op(
        self, name: str, sku: str, warehouse: str, args: list[str], *, retry: bool = False
    ) -> StockLevel:
        code, at, out, _ = await self._run(
            name, self._record_args(sku, warehouse), [sku, warehouse, *args], retry=retry
        )
        if code == "OK":
            return _level(sku, warehouse, out)
        if code == "LIMIT":
            raise StockLimitExceeded(sku, warehouse, at_ms=at)
        if code == "NEGATIVE":
            raise InvalidInput("delta", "would take on_hand below zero", at_ms=at)
        if code == "VERSION":
            expected = int(args[1] if name == "set_count" else args[0])
            raise VersionConflict(sku, warehouse, expected, int(out[0]), at_ms=at)
        raise OnhandError(f"{name}: unexpected reply {code}", at_ms=at)

    # -- stock operations ----------------------------------------------------------------
    async def receive(
        self, sku: str, warehouse: str, qty: int, *, reference: str = "", actor: str = ""
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("qty", qty, 1, MAX_QTY), check_text("reference", reference)
        check_text("actor", actor)
        return await self._stock_op("receive", sku, warehouse, [str(qty), reference, actor])

    async def adjust(
        self,
        sku: str,
        warehouse: str,
        delta: int,
        *,
        reason: str,
        reference: str = "",
        actor: str = "",
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("delta", delta, -MAX_QTY, MAX_QTY)
        check_text("reference", reference), check_text("actor", actor)
        if reason not in ADJUST_REASONS:
            raise InvalidInput("reason", f"must be one of {sorted(ADJUST_REASONS)}")
        if delta == 0 or delta * ADJUST_REASONS[reason] < 0:
            raise InvalidInput("delta", f"must be non-zero and fit the reason {reason!r}")
        return await self._stock_op(
            "adjust", sku, warehouse, [str(delta), reason, reference, actor]
        )

    async def set_count(
        self,
        sku: str,
        warehouse: str,
        count: int,
        *,
        expected_version: int,
        reference: str = "",
        actor: str = "",
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("count", count, 0, MAX_STOCK)
        check_int("expected_version", expected_version, 0, MAX_STOCK)
        check_text("reference", reference), check_text("actor", actor)
        return await self._stock_op(
            "set_count", sku, warehouse, [str(count), str(expected_version), reference, actor]
        )

    async def transfer(
        self,
        sku: str,
        source: str,
        destination: str,
        qty: int,
        *,
        reference: str = "",
        actor: str = "",
    ) -> tuple[StockLevel, StockLevel]:
        check_id("sku", sku), check_id("source", source), check_id("destination", destination)
        check_int("qty", qty, 1, MAX_QTY), check_text("reference", reference)
        check_text("actor", actor)
        if source == destination:
            raise InvalidInput("destination", "must differ from source")
        k = self.keys
        keys = [
            k.stock(sku, source),
            k.stock(sku, destination),
            k.sku(sku),
            k.warehouses(sku),
            k.sku_stream(sku),
            k.sku_ready(sku),
        ]
        code, at, out, _ = await self._run(
            "transfer", keys, [sku, source, destination, str(qty), reference, actor], retry=False
        )
        if code == "OK":
            return _level(sku, source, out[:6]), _level(sku, destination, out[6:12])
        if code == "SHORT":
            raise InsufficientStock([Shortfall(sku, qty, int(out[2]))], at_ms=at)
        if code == "LIMIT":
            raise StockLimitExceeded(sku, destination, at_ms=at)
        raise OnhandError(f"transfer: unexpected reply {code}", at_ms=at)

    async def set_safety_stock(
        self, sku: str, warehouse: str, qty: int, *, actor: str = ""
    ) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        check_int("qty", qty, 0, MAX_STOCK), check_text("actor", actor)
        return await self._stock_op(
            "set_safety_stock", sku, warehouse, [str(qty), actor], retry=True
        )

    async def set_policy(self, sku: str, policy: SkuPolicy, *, actor: str = "") -> SkuPolicy:
        await self.set_policy_with_events(sku, policy, actor=actor)
        return policy

    async def set_policy_with_events(
        self, sku: str, policy: SkuPolicy, *, actor: str = ""
    ) -> list[StreamEvent]:
        """:meth:`set_policy`, returning the ``policy_set`` event it appended (so the
        ledger can record it before the change is acknowledged)."""
        check_id("sku", sku), check_text("actor", actor)
        if not isinstance(policy, SkuPolicy):
            raise InvalidInput("policy", "must be a SkuPolicy")
        p = policy
        args = [
            sku,
            *(
                str(v)
                for v in (
                    p.backorder_limit,
                    p.preorder_limit,
                    p.preorder_release_ms,
                    p.reorder_point,
                    p.reorder_qty,
                    p.lead_time_days,
                    p.max_line_qty,
                )
            ),
            actor,
        ]
        code, at, out, _ = await self._run(
            "set_policy",
            [self.keys.sku(sku), self.keys.sku_stream(sku), self.keys.sku_ready(sku)],
            args,
            retry=True,
        )
        if code != "OK":
            raise OnhandError(f"set_policy: unexpected reply {code}", at_ms=at)
        return self._parse_emitted(out[1:])

    # -- reservations --------------------------------------------------------------------
    def _sku_keys(self, sku: str) -> SkuKeys:
        """A SKU's keys (:meth:`Keys.sku_keys`), built once per SKU: a CRC-32 and six
        f-strings per SKU on every reserve line and availability read otherwise. The
        memo is bounded (cleared when it reaches ``_SKU_KEYS_MAX`` SKUs)."""
        cached = self._sku_keys_memo.get(sku)
        if cached is None:
            cached = self.keys.sku_keys(sku)
            if len(self._sku_keys_memo) >= _SKU_KEYS_MAX:
                self._sku_keys_memo.clear()
            self._sku_keys_memo[sku] = cached
        return cached

    def _reservation(self, rid: str, at: int, out: list[str], replayed: bool) -> Reservation:
        status, created, deadline, owner, allocs_json = out[:5]
        allocs = tuple(
            sorted(
                (
                    Allocation(int(a["l"]), a["s"], a["w"], int(a["q"]))
                    for a in orjson.loads(allocs_json)
                ),
                key=lambda a: (a.line, a.warehouse),
            )
        )
        return Reservation(
            rid, ReservationStatus(status), allocs, int(created), int(deadline), owner, replayed, at
        )

    def reserve_arguments(self, request: ReserveRequest) -> tuple[list[str], list[str]]:
        """The KEYS and the ARGV after the clock of ``reserve.lua`` for ``request``."""
        rid = request.reservation_id
        keys = list(self.keys.reservation_keys(rid))
        args = [
            self._retention,
            rid,
            request.fingerprint(),
            str(request.ttl_ms),
            str(self._max_lifetime_ms),
            request.owner,
            request.actor,
            str(len(request.lines)),
        ]
        for line in request.lines:
            sku_keys = self._sku_keys(line.sku)
            keys += sku_keys[:5]
            keys += [sku_keys.stock_head + wh for wh in line.warehouses]
            args += [
                line.sku,
                str(line.qty),
                "1" if line.allow_split else "0",
                str(len(line.warehouses)),
                *line.warehouses,
            ]
        return keys, args

    async def reserve(self, request: ReserveRequest) -> Reservation:
        if not isinstance(request, ReserveRequest):
            raise InvalidInput("request", "must be a ReserveRequest")
        keys, args = self.reserve_arguments(request)
        code, at, out, retried = await self._run("reserve", keys, args, retry=True)
        return self.reserve_outcome(request, code, at, out, retried=retried)

    def reserve_outcome(
        self, request: ReserveRequest, code: str, at: int, out: list[str], *, retried: bool = False
    ) -> Reservation:
        """The reservation in ``reserve``'s reply for ``request`` (code, server time,
        payload), or its error raised — for a reply that ``lua/hold.lua`` passed on.
        ``retried``: the reply answers a repeat of a call that may have run."""
        rid = request.reservation_id
        if code in _OK:
            # A REPLAY found by our own retry is the first attempt's success, not a repeat.
            return self._reservation(rid, at, out, code == "REPLAY" and not retried)
        if code == "CONFLICT":
            raise IdempotencyConflict(rid, at_ms=at)
        if code == "SHORT":
            shortfalls = [
                Shortfall(out[i], int(out[i + 1]), int(out[i + 2])) for i in range(0, len(out), 3)
            ]
            raise InsufficientStock(shortfalls, at_ms=at)
        if code == "LINECAP":
            line = request.lines[int(out[0])]
            raise LineLimitExceeded(line.sku, line.qty, int(out[1]), at_ms=at)
        if code == "LIMIT":
            raise StockLimitExceeded(out[0], out[1], at_ms=at)
        raise OnhandError(f"reserve: unexpected reply {code}", at_ms=at)

    async def _transition(
        self,
        name: str,
        rid: str,
        action: str,
        extra: list[str],
        actor: str,
        *,
        tail: list[str] | None = None,
    ) -> Reservation:
        check_id("reservation_id", rid), check_text("actor", actor)
        keys = [self.keys.reservation(rid), self.keys.reservation_ready(rid)]
        code, at, out, _ = await self._run(name, keys, [self._retention, *extra, actor], retry=True)
        if code in _OK:
            if tail is not None:
                tail.extend(out[5:])
            return self._reservation(rid, at, out, code == "REPLAY")
        if code == "NOTFOUND":
            raise ReservationNotFound(rid, at_ms=at)
        if code == "STATE":
            raise InvalidTransition(rid, out[0], action, at_ms=at)
        if code == "NOSTOCK":
            raise NotEnoughOnHand(out[0], out[1], at_ms=at)
        raise OnhandError(f"{name}: unexpected reply {code}", at_ms=at)

    async def confirm(self, reservation_id: str, *, actor: str = "") -> Reservation:
        # The reply also carries the appended events; plain confirm does not parse them.
        return await self._transition("confirm", reservation_id, "confirm", [], actor)

    async def confirm_with_events(self, reservation_id: str, *, actor: str = "") -> Confirmation:
        """:meth:`confirm`, also returning what the ledger needs to record it at once:
        the events it appended (none on a repeat) and the reservation's fingerprint and
        maximum deadline. The ledger writes these through before acknowledging."""
        out: list[str] = []
        reservation = await self._transition(
            "confirm", reservation_id, "confirm", [], actor, tail=out
        )
        if not out:
            return Confirmation(reservation, [], "", 0)
        return Confirmation(reservation, self._parse_emitted(out[2:]), out[0], int(out[1]))

    def _parse_emitted(self, out: list[str]) -> list[StreamEvent]:
        if not out:
            return []
        events, i = [], 1
        for _ in range(int(out[0])):
            stream, entry_id, n = out[i], out[i + 1], int(out[i + 2])
            flat = out[i + 3 : i + 3 + n]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            events.append(
                StreamEvent(self.keys.stream_partition(stream), entry_id, Event.from_fields(fields))
            )
            i += 3 + n
        return events

    async def release(self, reservation_id: str, *, actor: str = "") -> Reservation:
        return await self._transition("release", reservation_id, "release", [], actor)

    async def extend(self, reservation_id: str, ttl_ms: int, *, actor: str = "") -> Reservation:
        check_int("ttl_ms", ttl_ms, 1, MAX_TTL_MS)
        return await self._transition("extend", reservation_id, "extend", [str(ttl_ms)], actor)

    async def fulfill(self, reservation_id: str, *, actor: str = "") -> Reservation:
        return await self._transition("fulfill", reservation_id, "fulfill", [], actor)

    async def cancel(self, reservation_id: str, *, actor: str = "") -> Reservation:
        return await self._transition("cancel", reservation_id, "cancel", [], actor)

    async def expire_due(self, limit: int = 500) -> int:
        check_int("limit", limit, 1, 10_000)
        total, faults = 0, []
        for p in range(self.keys.partitions):
            try:
                total += await self.expire_partition(p, limit)
            except EngineFault as exc:  # one corrupt partition must not stall the others
                faults.append(f"partition {p}: {exc}")
        if faults:
            raise EngineFault(f"expired {total}; skipped " + "; ".join(faults))
        return total

    async def expire_partition(self, partition: int, limit: int = 500) -> int:
        """One reaper batch for one partition (see ``expire.lua``): all or nothing."""
        _, _, out, _ = await self._run(
            "expire",
            [self.keys.deadlines(partition), self.keys.ready(partition)],
            [self._retention, str(limit)],
            retry=True,
        )
        return int(out[0])

    async def repair(
        self,
        sku: str,
        warehouse: str,
        *,
        expected_version: int,
        levels: tuple[int, int, int, int],
        version_floor: int,
        actor: str = "reconcile",
    ) -> StockLevel:
        """Set a record to ``levels`` (on_hand, held, committed, safety_stock) if it is
        still at ``expected_version``; recorded as a ``reconciled`` event (see repair.lua)."""
        check_int("expected_version", expected_version, 0, MAX_STOCK)
        for name, value in zip(
            ("on_hand", "held", "committed", "safety_stock"), levels, strict=True
        ):
            check_int(name, value, 0, MAX_STOCK)
        check_int("version_floor", version_floor, 0, MAX_STOCK - 1)
        args = [str(expected_version), *(str(v) for v in levels), str(version_floor), actor]
        return await self._stock_op("repair", sku, warehouse, args)

    async def script(
        self, name: str, keys: list[str], args: list[str]
    ) -> tuple[str, int, list[str]]:
        """Run an API-side script (``admit``, ``idempotency``): (code, server time, payload).

        Errors are translated as for every script (``BADARG`` → ``InvalidInput``, …).
        """
        code, at, out, _ = await self._run(name, keys, args, retry=False)
        return code, at, out

    async def run_script(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        """Run a maintenance script (``load``, ``digest``) and return its payload."""
        code, _, out, _ = await self._run(name, keys, args, retry=False)
        if code != "OK":
            raise OnhandError(f"{name}: unexpected reply {code}")
        return out

    # -- fencing ---------------------------------------------------------------------------
    async def mark_ready(self, epoch: int, partitions: Sequence[int] | None = None) -> str:
        """Open partitions (all by default) for this server; returns its run_id.

        Only the ledger's recovery may call this, after verifying or rebuilding Redis.
        """
        check_int("epoch", epoch, 0, MAX_STOCK)
        parts = range(self.keys.partitions) if partitions is None else partitions
        keys = [self.keys.ready(p) for p in parts]
        _, _, out, _ = await self._run("mark_ready", keys, [str(epoch)], retry=True)
        self._run_id, self._run_id_checked = out[0], time.monotonic()
        return out[0]

    async def fence(self) -> None:
        """Close every partition: all operations answer ``EngineNotReady`` until reopened."""
        try:
            await self.client.delete(*self.keys.all_ready())
        except RedisError as exc:
            raise EngineUnavailable(f"fence: {exc}") from exc

    async def readiness(self) -> dict[int, str | None]:
        """Each partition's marker if it is open for the current server, else ``None``."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.info("server")
                for key in self.keys.all_ready():
                    pipe.get(key)
                info, *markers = await pipe.execute()
        except RedisError as exc:
            raise EngineUnavailable(f"readiness: {exc}") from exc
        run_id = str(info["run_id"])
        self._run_id, self._run_id_checked = run_id, time.monotonic()
        out: dict[int, str | None] = {}
        for p, marker in enumerate(markers):
            value = _text(marker) if marker is not None else None
            out[p] = value if value is not None and value.endswith(f":{run_id}") else None
        return out

    async def _guard_read(self, marker: object, pipe_info: object | None) -> None:
        """Refuse a read of a partition that is not open for the current server.

        Reads compare against the server's run_id cached for at most ``RUN_ID_TTL_S``
        (writes compare against the live one inside every script).
        """
        if isinstance(pipe_info, dict):
            self._run_id, self._run_id_checked = str(pipe_info["run_id"]), time.monotonic()
        value = _text(marker) if marker is not None else ""
        if not self._run_id or not value.endswith(f":{self._run_id}"):
            raise EngineNotReady("Redis is fenced; retry later")

    def _run_id_stale(self) -> bool:
        return self._run_id is None or time.monotonic() - self._run_id_checked > RUN_ID_TTL_S

    # -- reads ---------------------------------------------------------------------------
    def _server_now(self, pipe_time: list[bytes | str]) -> int:
        if self._clock is not None:
            return self._clock()
        seconds, micros = pipe_time
        return int(seconds) * 1000 + int(micros) // 1000

    async def _read(
        self, name: str, ready_key: str, build: Callable[[Pipeline], object]
    ) -> tuple[int, list[Any]]:
        """Run ``build``'s reads in one pipeline behind the read guard; returns the server
        time and the reads' replies."""
        stale = self._run_id_stale()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(ready_key)
                pipe.time()
                if stale:
                    pipe.info("server")
                build(pipe)
                replies = await pipe.execute()
        except RedisError as exc:
            raise EngineUnavailable(f"{name}: {exc}") from exc
        marker, server_time, *rest = replies
        info = rest.pop(0) if stale else None
        await self._guard_read(marker, info)
        return self._server_now(server_time), rest

    async def get_reservation(self, reservation_id: str) -> Reservation:
        check_id("reservation_id", reservation_id)
        key = self.keys.reservation(reservation_id)
        now, (raw,) = await self._read(
            "get_reservation",
            self.keys.reservation_ready(reservation_id),
            lambda pipe: pipe.hmget(key, ["st", "cr", "dl", "own", "al"]),
        )
        if raw[0] is None:
            raise ReservationNotFound(reservation_id, at_ms=now)
        return self._reservation(reservation_id, now, [_text(v or b"") for v in raw], False)

    async def stock_level(self, sku: str, warehouse: str) -> StockLevel:
        check_id("sku", sku), check_id("warehouse", warehouse)
        key = self.keys.stock(sku, warehouse)
        _, (raw,) = await self._read(
            "stock_level",
            self.keys.sku_ready(sku),
            lambda pipe: pipe.hmget(key, ["on", "he", "co", "ss", "v", "low"]),
        )
        return _level(sku, warehouse, [_text(v) if v is not None else "0" for v in raw])

    async def availability(self, sku: str) -> SkuAvailability:
        return (await self.availability_many([sku]))[0]

    async def availability_many(self, skus: Sequence[str]) -> list[SkuAvailability]:
        """:meth:`availability` of many SKUs: one ``read`` script call (one atomic
        snapshot behind the fencing check) in the steady state.

        The call reads each SKU's policy and exposure, its warehouse set, and the records
        of the warehouses this engine last saw in that set. A set that differs from what
        was assumed (a SKU's first read here, or a warehouse new to the SKU: the sets
        only grow) is remembered and the whole read repeated, so every answer comes from
        one snapshot in which the records read are exactly the set's.

        A SKU whose part of the reply (policy, exposure, warehouse set, records) equals
        its previous read's reuses that read's levels and policy (immutable objects)
        instead of decoding them again: product pages mostly re-read unchanged SKUs."""
        for sku in skus:
            check_id("sku", sku)
        if not skus:
            return []
        sku_keys = [self._sku_keys(s) for s in skus]
        ready = sorted({sk.ready for sk in sku_keys})
        memo, read_memo = self._sku_reads, self._read_memo
        width = len(_RECORD_FIELDS)
        for _ in range(_READ_ATTEMPTS):
            assumed = [
                memo.get(s) or self._first_read(s, sk) for s, sk in zip(skus, sku_keys, strict=True)
            ]
            keys = list(ready)
            for r in assumed:
                keys += r.keys
            now, values = await self._read_values(
                keys,
                len(ready),
                "".join([r.plan for r in assumed]),
                _RECORD_FIELDS,
                _SKU_READ_FIELDS,
            )
            result = []
            stale = False
            at = 0
            for sku, sk, r in zip(skus, sku_keys, assumed, strict=True):
                seen = read_memo.get(sku)
                if seen is not None and seen.read is r:
                    # The same values (their count of set members included, so the same
                    # length) for the same plan: what this SKU decoded to last time.
                    end = at + len(seen.raw)
                    if values[at:end] == seen.raw:
                        at = end
                        result.append(
                            SkuAvailability(sku, seen.levels, seen.policy, seen.beyond, now)
                        )
                        continue
                start = at
                beyond = int(values[at + len(_POLICY_FIELDS)] or 0)
                at += len(_SKU_READ_FIELDS)
                count = int(values[at])
                members = tuple(sorted(values[at + 1 : at + 1 + count]))
                at += 1 + count
                end = at + width * len(r.warehouses)
                if members != r.warehouses:
                    stale = True
                    self._remember_warehouses(sku, _SkuRead.of(sk, members))
                    at = end
                    continue
                levels, policy = self._decode_sku(sku, r.warehouses, values, start, at)
                if len(read_memo) >= _READ_MEMO_MAX:
                    read_memo.clear()
                read_memo[sku] = _SkuDecoded(r, values[start:end], levels, policy, beyond)
                at = end
                result.append(SkuAvailability(sku, levels, policy, beyond, now))
            if not stale:
                return result
        raise EngineUnavailable("availability: warehouse sets kept changing while read; retry")

    def _decode_sku(
        self, sku: str, whs: tuple[str, ...], values: list[str], start: int, records: int
    ) -> tuple[tuple[StockLevel, ...], SkuPolicy]:
        """A SKU's levels and policy from its part of a ``read`` reply (its policy fields
        at ``start``, the records of ``whs`` from ``records`` on)."""
        width = len(_RECORD_FIELDS)
        levels = tuple(
            _level(sku, wh, [v or "0" for v in values[at : at + width]])
            for wh, at in zip(whs, range(records, records + width * len(whs), width), strict=True)
        )
        return levels, self._policy(values[start : start + len(_POLICY_FIELDS)])

    def _first_read(self, sku: str, sk: SkuKeys) -> _SkuRead:
        """A SKU not read before: no warehouses assumed (the read learns its set)."""
        read = _SkuRead((), (sk.sku, sk.warehouses), "Hs")
        self._remember_warehouses(sku, read)
        return read

    def _remember_warehouses(self, sku: str, read: _SkuRead) -> None:
        if len(self._sku_reads) >= _SKU_KEYS_MAX:
            self._sku_reads.clear()
        self._sku_reads[sku] = read

    def _policy(self, raw: list[str]) -> SkuPolicy:
        """A SKU's policy from its stored fields ('' = unset), built (and validated) once
        per distinct set of values: most SKUs of a catalogue share a few policies. The
        memo is bounded like the key memo."""
        values = tuple(raw)
        policy = self._policy_memo.get(values)
        if policy is None:
            policy = SkuPolicy(
                *(int(v) if v else d for v, d in zip(values, _POLICY_DEFAULTS, strict=True))
            )
            if len(self._policy_memo) >= _SKU_KEYS_MAX:
                self._policy_memo.clear()
            self._policy_memo[values] = policy
        return policy

    async def _read_values(
        self,
        keys: list[str],
        ready: int,
        plan: str,
        fields_h: Sequence[str],
        fields_upper_h: Sequence[str] = (),
    ) -> tuple[int, list[str]]:
        """One ``read`` call (``ready`` markers lead ``keys``; ``plan`` as in read.lua,
        ``fields_h`` / ``fields_upper_h`` its field lists for 'h' / 'H'): the server time
        and the values read, decoded from the script's one JSON string."""
        args = [str(ready), plan, str(len(fields_h)), *fields_h]
        args += [str(len(fields_upper_h)), *fields_upper_h]
        _, now, out, _ = await self._run("read", keys, args, retry=True)
        try:
            values = orjson.loads(out[0])
        except (IndexError, orjson.JSONDecodeError) as exc:
            raise EngineFault(f"read: a reply that is not a JSON list: {exc}", at_ms=now) from exc
        if not isinstance(values, list):  # the script encodes a list of strings, never else
            raise EngineFault("read: a reply that is not a JSON list", at_ms=now)
        return now, values

    async def state(self) -> State:
        try:
            return await read_state(self.client, self.keys)
        except RedisError as exc:
            raise EngineUnavailable(f"state: {exc}") from exc

    async def events(self) -> list[Event]:
        try:
            return await read_events(self.client, self.keys)
        except RedisError as exc:
            raise EngineUnavailable(f"events: {exc}") from exc
