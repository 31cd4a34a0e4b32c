"""The exceptions onhand raises, and nothing else.

Every error a caller can act on is a subclass of :class:`OnhandError`. Errors from
the Redis client never leave the engine untranslated: they become
:class:`EngineUnavailable` (retryable; the operation may or may not have run when the
cause was a timeout, which is why every mutating call carries an id that makes a
retry safe)::

    OnhandError
    ├── InvalidInput                 bad argument; nothing was changed          (4xx)
    │   └── LineLimitExceeded        a line asks for more than the SKU allows
    ├── StockLimitExceeded           a counter would pass 2**53 - 1             (4xx)
    ├── InsufficientStock            carries every shortfall of the order       (409)
    ├── NotEnoughOnHand              fulfil needs units that are not on hand    (409)
    ├── ReservationNotFound                                                      (404)
    ├── InvalidTransition            e.g. confirm after expiry; carries status  (409)
    ├── IdempotencyConflict          same reservation id, different payload     (422)
    ├── VersionConflict              set-count with a stale expected version    (412)
    ├── EngineUnavailable            Redis unreachable / timed out; retry       (503)
    │   └── EngineNotReady           Redis is fenced (lost, restarted, rebuilding) (503)
    └── EngineFault                  Redis holds unexpected data; nothing changed (500)

Errors raised after a script ran carry ``at_ms``: the Redis server time the script
used, so a caller (or a test) knows exactly which clock reading decided the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "EngineFault",
    "EngineNotReady",
    "EngineUnavailable",
    "IdempotencyConflict",
    "InsufficientStock",
    "InvalidInput",
    "InvalidTransition",
    "LineLimitExceeded",
    "NotEnoughOnHand",
    "OnhandError",
    "ReservationNotFound",
    "Shortfall",
    "StockLimitExceeded",
    "VersionConflict",
]


class OnhandError(Exception):
    """Base class of every error onhand raises on purpose."""

    at_ms: int | None = None

    def __init__(self, message: str, *, at_ms: int | None = None) -> None:
        super().__init__(message)
        self.at_ms = at_ms


class InvalidInput(OnhandError, ValueError):
    """An argument is malformed or out of range. Nothing was changed."""

    def __init__(self, field: str, message: str, *, at_ms: int | None = None) -> None:
        super().__init__(f"{field}: {message}", at_ms=at_ms)
        self.field = field


class LineLimitExceeded(InvalidInput):
    """A reservation line asks for more units than the SKU's ``max_line_qty``."""

    def __init__(self, sku: str, requested: int, limit: int, *, at_ms: int | None = None) -> None:
        super().__init__("lines", f"{sku}: {requested} > max_line_qty {limit}", at_ms=at_ms)
        self.sku, self.requested, self.limit = sku, requested, limit


class StockLimitExceeded(OnhandError):
    """The change would push a counter past ``MAX_STOCK`` (2**53 - 1). Nothing changed."""

    def __init__(self, sku: str, warehouse: str, *, at_ms: int | None = None) -> None:
        super().__init__(f"stock limit exceeded for {sku}@{warehouse}", at_ms=at_ms)
        self.sku, self.warehouse = sku, warehouse


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One line that could not be covered: what was asked and what could be had."""

    sku: str
    requested: int
    available: int


class InsufficientStock(OnhandError):
    """The order cannot be held in full; nothing was held. Lists every short line."""

    def __init__(self, shortfalls: Sequence[Shortfall], *, at_ms: int | None = None) -> None:
        self.shortfalls = tuple(shortfalls)
        detail = ", ".join(f"{s.sku} ({s.available}/{s.requested})" for s in self.shortfalls)
        super().__init__(f"insufficient stock: {detail}", at_ms=at_ms)


class NotEnoughOnHand(OnhandError):
    """Fulfilment would take ``on_hand`` below zero (a backorder not yet received)."""

    def __init__(self, sku: str, warehouse: str, *, at_ms: int | None = None) -> None:
        super().__init__(f"not enough on hand to ship {sku}@{warehouse}", at_ms=at_ms)
        self.sku, self.warehouse = sku, warehouse


class ReservationNotFound(OnhandError):
    """No reservation with this id (never made, or purged after its retention)."""

    def __init__(self, reservation_id: str, *, at_ms: int | None = None) -> None:
        super().__init__(f"reservation {reservation_id} not found", at_ms=at_ms)
        self.reservation_id = reservation_id


class InvalidTransition(OnhandError):
    """The reservation's current status does not allow the requested transition."""

    def __init__(
        self, reservation_id: str, status: str, action: str, *, at_ms: int | None = None
    ) -> None:
        super().__init__(
            f"cannot {action} reservation {reservation_id}: it is {status}", at_ms=at_ms
        )
        self.reservation_id, self.status, self.action = reservation_id, status, action


class IdempotencyConflict(OnhandError):
    """The reservation id was used before with a different payload."""

    def __init__(self, reservation_id: str, *, at_ms: int | None = None) -> None:
        super().__init__(
            f"reservation {reservation_id} exists with a different payload", at_ms=at_ms
        )
        self.reservation_id = reservation_id


class VersionConflict(OnhandError):
    """A set-count was guarded by a version the record no longer has."""

    def __init__(
        self, sku: str, warehouse: str, expected: int, actual: int, *, at_ms: int | None = None
    ) -> None:
        super().__init__(
            f"{sku}@{warehouse}: expected version {expected}, record is at {actual}", at_ms=at_ms
        )
        self.sku, self.warehouse, self.expected, self.actual = sku, warehouse, expected, actual


class EngineUnavailable(OnhandError):
    """Redis could not be reached or did not answer in time. Retry with the same ids."""


class EngineNotReady(EngineUnavailable):
    """Redis is fenced: it restarted, lost or rolled back data, or is being rebuilt.

    Nothing was read or changed. Retry later; the ledger reopens Redis once it has
    verified it against Postgres or rebuilt it (see ``onhand.ledger.fencing``).
    """


class EngineFault(OnhandError):
    """Redis holds data the engine did not write (e.g. a key of the wrong type).

    Raised before any change: every script checks the types of the keys it will write
    before its first write. Needs an operator (reconcile / rehydrate), not a retry.
    """
