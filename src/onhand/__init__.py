"""onhand: a Redis-first inventory reservation engine.

Importing this package opens nothing and reads no settings.
"""

from importlib.metadata import PackageNotFoundError, version

from onhand.domain import (
    Allocation,
    Line,
    Reservation,
    ReservationStatus,
    ReserveRequest,
    SkuAvailability,
    SkuPolicy,
    StockLevel,
)
from onhand.errors import (
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

__all__ = [
    "Allocation",
    "EngineUnavailable",
    "IdempotencyConflict",
    "InsufficientStock",
    "InvalidInput",
    "InvalidTransition",
    "Line",
    "LineLimitExceeded",
    "NotEnoughOnHand",
    "OnhandError",
    "Reservation",
    "ReservationNotFound",
    "ReservationStatus",
    "ReserveRequest",
    "Shortfall",
    "SkuAvailability",
    "SkuPolicy",
    "StockLevel",
    "StockLimitExceeded",
    "VersionConflict",
]

try:
    __version__ = version("onhand")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0"
