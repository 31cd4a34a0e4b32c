"""The engine port: every stock operation onhand offers, as one async contract.

Two implementations keep this contract and one test suite holds both to it:
:class:`onhand.engine.redis.RedisEngine` (Lua scripts in Redis, the real thing) and
:class:`onhand.engine.memory.MemoryEngine` (pure Python, the executable specification).

Contract shared by every mutating method:

* **Atomic.** The whole check-and-change happens at once or not at all; on any error
  nothing changed (lazy expiry during a failed ``reserve`` is the one documented
  exception: holds that were already overdue are expired and stay expired).
* **One clock.** Deadlines and expiry use the Redis server's time (``TIME``); results
  and errors carry it as ``at_ms``.
* **Events.** Every change appends its events (see :mod:`onhand.events`) in the same
  atomic step.
* **Idempotent where it matters.** ``reserve`` with a known ``reservation_id`` and the
  same payload returns the original reservation (``replayed=True``) and holds nothing
  more; with another payload it raises ``IdempotencyConflict``. ``confirm``/``release``/
  ``fulfill``/``cancel`` repeated after they succeeded return the reservation again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from onhand.domain import Reservation, ReserveRequest, SkuAvailability, SkuPolicy, StockLevel
from onhand.events import Event
from onhand.state import State

__all__ = ["DEFAULT_MAX_HOLD_LIFETIME_MS", "ManualClock", "StockEngine"]

DEFAULT_MAX_HOLD_LIFETIME_MS = 2 * 60 * 60 * 1000
"""A hold can never be extended past its creation time plus this (2 h)."""
LAZY_EXPIRY_LIMIT = 50
"""Overdue reservations a failing ``reserve`` frees per short SKU before it gives up."""


class ManualClock:
    """A clock for simulations and tests only: a fixed time that moves when told to.

    Passed to an engine, it replaces the Redis server clock (the Redis engine sends its
    reading to every script). Production engines never get one.
    """

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def __call__(self) -> int:
        return self.now_ms


class StockEngine(ABC):
    """Hold, confirm and move stock. See the module docstring for the shared contract."""

    # -- stock operations (operations staff) -------------------------------------------
    @abstractmethod
    async def receive(
        self, sku: str, warehouse: str, qty: int, *, reference: str = "", actor: str = ""
    ) -> StockLevel:
        """Add ``qty`` (1..MAX_QTY) to ``on_hand``; ``reference`` is e.g. a PO number."""

    @abstractmethod
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
        """Change ``on_hand`` by ``delta`` (±1..MAX_QTY) for ``reason`` (see ADJUST_REASONS).

        The delta's sign must fit the reason (damaged/lost < 0, found/returned > 0).
        ``on_hand`` never goes below 0; it may drop below what is promised, in which
        case ``available`` turns negative and counts as beyond-stock exposure.
        """

    @abstractmethod
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
        """Stocktake: set ``on_hand`` to ``count`` if the record is at ``expected_version``.

        Raises ``VersionConflict`` otherwise. A count equal to ``on_hand`` is still
        recorded (a ``counted`` event with delta 0).
        """

    @abstractmethod
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
        """Move ``qty`` on-hand units of one SKU between two warehouses, atomically.

        Only available units move (not held, committed or safety stock); raises
        ``InsufficientStock`` otherwise. One event per side.
        """

    @abstractmethod
    async def set_safety_stock(
        self, sku: str, warehouse: str, qty: int, *, actor: str = ""
    ) -> StockLevel:
        """Set the units of a record that are never sold (0..MAX_STOCK)."""

    @abstractmethod
    async def set_policy(self, sku: str, policy: SkuPolicy, *, actor: str = "") -> SkuPolicy:
        """Replace the SKU's policy (backorder/pre-order limits, reorder point, line cap)."""

    # -- reservations (checkout) ---------------------------------------------------------
    @abstractmethod
    async def reserve(self, request: ReserveRequest) -> Reservation:
        """Hold every line of the order until ``now + ttl_ms``, or hold nothing.

        Per line: the first candidate warehouse that covers the whole line; else, if the
        line allows splitting, the fewest warehouses that cover it (largest first,
        allocated in preference order); else units beyond stock within the SKU's
        backorder / pre-order allowance (at the preferred warehouse, or the one with the
        most stock when splitting is not allowed). Raises ``InsufficientStock`` listing
        every short line. Before failing, overdue holds of the short SKUs are expired
        (lazy expiry) and the order is planned again.
        """

    @abstractmethod
    async def confirm(self, reservation_id: str, *, actor: str = "") -> Reservation:
        """pending → confirmed (held → committed). Fails once the deadline has passed."""

    @abstractmethod
    async def release(self, reservation_id: str, *, actor: str = "") -> Reservation:
        """pending → released (held → available)."""

    @abstractmethod
    async def extend(self, reservation_id: str, ttl_ms: int, *, actor: str = "") -> Reservation:
        """Move a pending hold's deadline to ``now + ttl_ms``, capped at creation plus the
        maximum hold lifetime. A deadline never moves earlier."""

    @abstractmethod
    async def fulfill(self, reservation_id: str, *, actor: str = "") -> Reservation:
        """confirmed → fulfilled (shipped: on_hand and committed both drop)."""

    @abstractmethod
    async def cancel(self, reservation_id: str, *, actor: str = "") -> Reservation:
        """confirmed → cancelled (committed → available)."""

    @abstractmethod
    async def expire_due(self, limit: int = 500) -> int:
        """Expire overdue pending holds: at most ``limit`` per partition. Returns how many.

        Safe to run from several reapers at once; each hold expires exactly once.
        """

    # -- reads ---------------------------------------------------------------------------
    @abstractmethod
    async def get_reservation(self, reservation_id: str) -> Reservation:
        """The reservation as it is now (``ReservationNotFound`` if unknown)."""

    @abstractmethod
    async def stock_level(self, sku: str, warehouse: str) -> StockLevel:
        """One record (all zero, version 0, if never touched)."""

    @abstractmethod
    async def availability(self, sku: str) -> SkuAvailability:
        """Every warehouse record of the SKU plus its policy and beyond-stock exposure."""

    @abstractmethod
    async def state(self) -> State:
        """The whole state (for reconciliation and tests; reads everything)."""

    @abstractmethod
    async def events(self) -> list[Event]:
        """Every event still in the streams, per partition in stream order."""
