"""Reading the whole Redis state of one namespace into a :class:`~onhand.state.State`.

For reconciliation and tests: it SCANs every key of the namespace and reads each in
pipelined batches. It is not a consistent cut while writes continue (that needs the
stream positions too; see the ledger's reconcile), and it is not for the hot path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from redis.asyncio import Redis

from onhand.domain import Allocation, ReservationStatus, SkuPolicy
from onhand.events import Event
from onhand.keys import Keys
from onhand.state import RecordState, ReservationState, SkuState, State

__all__ = ["read_events", "read_state"]

_BATCH = 500


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(fields: dict[str, str], name: str, default: int = 0) -> int:
    value = fields.get(name)
    return int(value) if value is not None else default


async def _scan(client: Redis, keys: Keys) -> list[str]:
    return [_s(k) async for k in client.scan_iter(match=keys.pattern(), count=1000)]


async def _read(client: Redis, names: list[str], kind: str) -> list[object]:
    out: list[object] = []
    for start in range(0, len(names), _BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for name in names[start : start + _BATCH]:
                if kind == "hash":
                    pipe.hgetall(name)
                elif kind == "set":
                    pipe.smembers(name)
                else:
                    pipe.zrange(name, 0, -1, withscores=True)
            out.extend(await pipe.execute())
    return out


def _fields(raw: object) -> dict[str, str]:
    assert isinstance(raw, dict)
    return {_s(k): _s(v) for k, v in raw.items()}


def _rid(header_key: str) -> str:
    return header_key.rsplit(":res:", 1)[1]


async def read_state(client: Redis, keys: Keys) -> State:
    """Everything the namespace holds, as plain values (see the module docstring)."""
    pattern = re.compile(
        re.escape(keys.namespace) + r":\{p\d+\}:(?:(stock|sku|whs|holds|res):(.+)|deadlines)$"
    )
    groups: dict[str, list[tuple[str, str]]] = {}
    for name in await _scan(client, keys):
        m = pattern.fullmatch(name)
        if m is None:
            continue
        kind = m.group(1) or "deadlines"
        groups.setdefault(kind, []).append((name, m.group(2) or ""))
    state = State()

    async def read(kind: str, how: str) -> Iterable[tuple[str, object]]:
        entries = groups.get(kind, [])
        values = await _read(client, [n for n, _ in entries], how)
        return zip([ident for _, ident in entries], values, strict=True)

    for ident, raw in await read("stock", "hash"):
        f = _fields(raw)
        sku, warehouse = ident.split(":")
        state.records[(sku, warehouse)] = RecordState(
            _int(f, "on"),
            _int(f, "he"),
            _int(f, "co"),
            _int(f, "ss"),
            _int(f, "v"),
            f.get("low") == "1",
        )
    for ident, raw in await read("sku", "hash"):
        f = _fields(raw)
        policy = SkuPolicy(
            _int(f, "bo"),
            _int(f, "po"),
            _int(f, "prel"),
            _int(f, "rp"),
            _int(f, "rq"),
            _int(f, "lt"),
            _int(f, "mlq", SkuPolicy().max_line_qty),
        )
        state.skus[ident] = SkuState(policy, _int(f, "pv"), _int(f, "bey"))
    for ident, raw in await read("whs", "set"):
        assert isinstance(raw, set)
        state.warehouses[ident] = {_s(w) for w in raw}
    for ident, raw in await read("holds", "zset"):
        assert isinstance(raw, list)
        state.holds[ident] = {_rid(_s(m)): int(score) for m, score in raw}
    for ident, raw in await read("res", "hash"):
        f = _fields(raw)
        allocs = tuple(
            sorted(
                (Allocation(int(a["l"]), a["s"], a["w"], int(a["q"])) for a in json.loads(f["al"])),
                key=lambda a: (a.line, a.warehouse),
            )
        )
        state.reservations[ident] = ReservationState(
            status=ReservationStatus(f["st"]),
            fingerprint=f["fp"],
            owner=f.get("own", ""),
            created_ms=_int(f, "cr"),
            deadline_ms=_int(f, "dl"),
            max_deadline_ms=_int(f, "cap"),
            allocations=allocs,
            extensions=_int(f, "nx"),
            updated_ms=_int(f, "up"),
        )
    for _, raw in await read("deadlines", "zset"):
        assert isinstance(raw, list)
        state.deadlines.update({_rid(_s(m)): int(score) for m, score in raw})
    return state.canonical()


async def read_events(client: Redis, keys: Keys) -> list[Event]:
    """Every event in every partition stream of the namespace, per stream in order."""
    events: list[Event] = []
    for stream in keys.all_streams():
        for _, fields in await client.xrange(stream, "-", "+") or []:
            if fields:  # an entry trimmed while pending reads back as None
                events.append(Event.from_fields(fields))
    return events
