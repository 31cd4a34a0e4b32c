"""The stock model: plain values, their bounds and their validation. No I/O.

Per (SKU, warehouse) a :class:`StockLevel` keeps ``on_hand`` (physically present),
``held`` (pending checkout holds), ``committed`` (confirmed, not yet shipped) and
``safety_stock``; ``available = on_hand - held - committed - safety_stock``. ``available``
is negative while units are promised beyond sellable stock (backorders, pre-orders,
stock written down below what was already promised) or stock is below its safety
level. A record's *exposure* is the units it promised beyond sellable stock,
``max(0, held + committed - max(0, on_hand - safety_stock))``; a SKU's exposure (the sum
over its records) is what its backorder / pre-order allowance bounds.

Per SKU a :class:`SkuPolicy` says how far beyond stock the SKU may be promised, when
it counts as low, and the largest quantity one reservation line may take.

Bounds (checked here *and* again inside every Lua script):
quantities per operation are integers in ``1..MAX_QTY``; no counter ever exceeds
``MAX_STOCK``; ids match ``ID_PATTERN``.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field

from onhand.errors import InvalidInput

__all__ = [
    "ADJUST_REASONS",
    "ID_PATTERN",
    "MAX_CANDIDATES",
    "MAX_LINES",
    "MAX_QTY",
    "MAX_STOCK",
    "MAX_TEXT",
    "MAX_TTL_MS",
    "STATUS_RANK",
    "Allocation",
    "Line",
    "Reservation",
    "ReservationStatus",
    "ReserveRequest",
    "SkuAvailability",
    "SkuPolicy",
    "StockLevel",
    "check_id",
    "check_int",
    "check_text",
]

MAX_QTY = 10**9
"""Largest quantity a single operation (line, receipt, adjustment, transfer) may move."""
MAX_STOCK = 2**53 - 1
"""Largest value any counter may reach; Lua numbers are exact up to here."""
MAX_LINES = 100
MAX_CANDIDATES = 32
MAX_TTL_MS = 86_400_000
MAX_TEXT = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TEXT_PATTERN = re.compile(r"[\x20-\x7e]{0,128}")


class ReservationStatus(enum.StrEnum):
    """Lifecycle: pending → confirmed | released | expired; confirmed → fulfilled | cancelled."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"


STATUS_RANK: dict[ReservationStatus, int] = {
    # How far along its lifecycle a status is: a projection only ever moves a
    # reservation to a higher rank, whatever order partitions' events arrive in.
    ReservationStatus.PENDING: 0,
    ReservationStatus.CONFIRMED: 1,
    ReservationStatus.RELEASED: 2,
    ReservationStatus.EXPIRED: 2,
    ReservationStatus.FULFILLED: 2,
    ReservationStatus.CANCELLED: 2,
}

ADJUST_REASONS: dict[str, int] = {
    # reason -> required sign of the delta (0: either)
    "damaged": -1,
    "lost": -1,
    "found": 1,
    "returned": 1,
    "correction": 0,
}


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """Return ``value`` if it is a real ``int`` (not bool) in ``lo..hi``; else raise."""
    if type(value) is not int:
        raise InvalidInput(name, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidInput(name, f"must be in {lo}..{hi}")
    return value


def check_id(name: str, value: object) -> str:
    """Return ``value`` if it is an allow-listed id (``[A-Za-z0-9._-]{1,64}``)."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise InvalidInput(name, "must match [A-Za-z0-9._-]{1,64}")
    return value


def check_text(name: str, value: object) -> str:
    """Return ``value`` if it is printable ASCII of at most ``MAX_TEXT`` characters."""
    if not isinstance(value, str) or _TEXT_PATTERN.fullmatch(value) is None:
        raise InvalidInput(name, f"must be printable ASCII, at most {MAX_TEXT} characters")
    return value


@dataclass(frozen=True, slots=True)
class SkuPolicy:
    """How one SKU may be sold.

    ``backorder_limit``: units that may be promised beyond sellable stock (the SKU's
    exposure, summed over its warehouses). While ``now < preorder_release_ms`` the
    ``preorder_limit`` applies instead (pre-orders before the release date).
    ``reorder_point``: a record whose ``available`` drops below it emits one
    ``low_stock`` event; a changed policy takes effect at each record's next change,
    when its low flag is evaluated again. ``max_line_qty``:
    the largest quantity one reservation line may ask for. ``reorder_qty`` and
    ``lead_time_days`` are carried for replenishment and restock dates.
    """

    backorder_limit: int = 0
    preorder_limit: int = 0
    preorder_release_ms: int = 0
    reorder_point: int = 0
    reorder_qty: int = 0
    lead_time_days: int = 0
    max_line_qty: int = MAX_QTY

    def __post_init__(self) -> None:
        check_int("backorder_limit", self.backorder_limit, 0, MAX_STOCK)
        check_int("preorder_limit", self.preorder_limit, 0, MAX_STOCK)
        check_int("preorder_release_ms", self.preorder_release_ms, 0, MAX_STOCK)
        check_int("reorder_point", self.reorder_point, 0, MAX_STOCK)
        check_int("reorder_qty", self.reorder_qty, 0, MAX_STOCK)
        check_int("lead_time_days", self.lead_time_days, 0, 3650)
        check_int("max_line_qty", self.max_line_qty, 1, MAX_QTY)

    def allowance(self, now_ms: int) -> int:
        """Units that may be promised beyond stock at ``now_ms`` (pre-order or backorder)."""
        if self.preorder_limit > 0 and now_ms < self.preorder_release_ms:
            return self.preorder_limit
        return self.backorder_limit


@dataclass(frozen=True, slots=True)
class StockLevel:
    """One (SKU, warehouse) record as of ``version`` (0: never touched)."""

    sku: str
    warehouse: str
    on_hand: int = 0
    held: int = 0
    committed: int = 0
    safety_stock: int = 0
    version: int = 0
    low: bool = False

    @property
    def available(self) -> int:
        return self.on_hand - self.held - self.committed - self.safety_stock

    @property
    def exposure(self) -> int:
        """Units this record promised beyond its sellable stock (see module docstring)."""
        return max(0, self.held + self.committed - max(0, self.on_hand - self.safety_stock))


@dataclass(frozen=True, slots=True)
class Line:
    """One order line: ``qty`` of ``sku`` from ``warehouses`` (ordered preference).

    One warehouse is a fixed warehouse; several are candidates in preference order
    (computed by :mod:`onhand.allocation`). ``allow_split`` lets the line be spread over
    several candidates when no single one covers it.
    """

    sku: str
    qty: int
    warehouses: tuple[str, ...]
    allow_split: bool = False

    def __post_init__(self) -> None:
        check_id("sku", self.sku)
        check_int("qty", self.qty, 1, MAX_QTY)
        if (
            not isinstance(self.warehouses, tuple)
            or not 1 <= len(self.warehouses) <= MAX_CANDIDATES
        ):
            raise InvalidInput("warehouses", f"1..{MAX_CANDIDATES} warehouse ids required")
        for wh in self.warehouses:
            check_id("warehouse", wh)
        if len(set(self.warehouses)) != len(self.warehouses):
            raise InvalidInput("warehouses", "a warehouse is listed twice")
        if type(self.allow_split) is not bool:
            raise InvalidInput("allow_split", "must be a boolean")


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """Hold every line for ``ttl_ms`` or nothing. ``reservation_id`` is the idempotency key."""

    reservation_id: str
    lines: tuple[Line, ...]
    ttl_ms: int
    owner: str = ""
    actor: str = ""

    def __post_init__(self) -> None:
        check_id("reservation_id", self.reservation_id)
        if not isinstance(self.lines, tuple) or not 1 <= len(self.lines) <= MAX_LINES:
            raise InvalidInput("lines", f"1..{MAX_LINES} lines required")
        skus = [line.sku for line in self.lines]
        if len(set(skus)) != len(skus):
            raise InvalidInput("lines", "each SKU may appear in one line only")
        check_int("ttl_ms", self.ttl_ms, 1, MAX_TTL_MS)
        if self.owner:
            check_id("owner", self.owner)
        check_text("actor", self.actor)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical payload: equal payloads, equal fingerprints.

        Covers the lines (with candidates and split flags), the TTL and the owner; not
        the actor, which describes who asked rather than what was asked.
        """
        parts = [str(self.ttl_ms), self.owner]
        for line in self.lines:
            parts.append(
                f"{line.sku}*{line.qty}*{int(line.allow_split)}*{','.join(line.warehouses)}"
            )
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Allocation:
    """``qty`` units of line ``line`` (its index in the request) held at ``warehouse``."""

    line: int
    sku: str
    warehouse: str
    qty: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reservation as the engine reports it.

    ``replayed`` is true when the call found the reservation already in the state it
    asked for (an idempotent repeat) and changed nothing. ``at_ms`` is the server time
    that decided the call.
    """

    reservation_id: str
    status: ReservationStatus
    allocations: tuple[Allocation, ...]
    created_ms: int
    deadline_ms: int
    owner: str = ""
    replayed: bool = False
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class SkuAvailability:
    """What a product page needs for one SKU: totals and per-warehouse levels."""

    sku: str
    levels: tuple[StockLevel, ...]
    policy: SkuPolicy = field(default_factory=SkuPolicy)
    beyond: int = 0
    at_ms: int = 0

    @property
    def available(self) -> int:
        return sum(max(0, lvl.available) for lvl in self.levels)

    @property
    def on_hand(self) -> int:
        return sum(lvl.on_hand for lvl in self.levels)

    @property
    def held(self) -> int:
        return sum(lvl.held for lvl in self.levels)

    @property
    def committed(self) -> int:
        return sum(lvl.committed for lvl in self.levels)

    @property
    def low_stock(self) -> bool:
        return any(lvl.low for lvl in self.levels)

    @property
    def unaccounted(self) -> int:
        """Units promised beyond stock that the SKU's recorded exposure does not cover.

        Every script keeps ``beyond`` in step with its records, so this is 0 unless a
        record was changed behind the engine's back (or by a defect): an oversell.
        Meaningful only when ``levels`` and ``beyond`` were read in one snapshot.
        """
        return max(0, sum(lvl.exposure for lvl in self.levels) - self.beyond)

    def backorder_remaining(self) -> int:
        if self.policy.preorder_limit > 0 and self.at_ms < self.policy.preorder_release_ms:
            return 0
        return max(0, self.policy.backorder_limit - self.beyond)

    def preorder_remaining(self) -> int:
        if self.policy.preorder_limit > 0 and self.at_ms < self.policy.preorder_release_ms:
            return max(0, self.policy.preorder_limit - self.beyond)
        return 0
