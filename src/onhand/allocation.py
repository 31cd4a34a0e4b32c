"""Ordering candidate warehouses for a reservation line. Pure functions, no I/O.

The reserve script takes each line's candidates in preference order; this module
computes that order from the warehouse catalog: by configured priority, or nearest
first to a ship-to point (great-circle distance, haversine). Inactive warehouses are
never candidates. Ties fall back to priority, then to the id, so the order is
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from onhand.domain import check_id, check_int
from onhand.errors import InvalidInput

__all__ = ["EARTH_RADIUS_KM", "Warehouse", "by_priority", "haversine_km", "nearest"]

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), in kilometres."""


@dataclass(frozen=True, slots=True)
class Warehouse:
    """A stock location. Lower ``priority`` is preferred."""

    warehouse_id: str
    name: str = ""
    latitude: float = 0.0
    longitude: float = 0.0
    priority: int = 100
    active: bool = True

    def __post_init__(self) -> None:
        check_id("warehouse_id", self.warehouse_id)
        _check_point(self.latitude, self.longitude)
        check_int("priority", self.priority, 0, 1_000_000)


def _check_point(latitude: float, longitude: float) -> None:
    for name, value, bound in (("latitude", latitude, 90.0), ("longitude", longitude, 180.0)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(name, "must be a number")
        if not -bound <= value <= bound:  # also rejects NaN
            raise InvalidInput(name, f"must be in -{bound:g}..{bound:g}")


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two points given in degrees, in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def by_priority(warehouses: Iterable[Warehouse]) -> tuple[str, ...]:
    """Active warehouse ids, lowest priority value first (ties by id)."""
    active = [w for w in warehouses if w.active]
    return tuple(w.warehouse_id for w in sorted(active, key=lambda w: (w.priority, w.warehouse_id)))


def nearest(warehouses: Iterable[Warehouse], latitude: float, longitude: float) -> tuple[str, ...]:
    """Active warehouse ids, nearest to (``latitude``, ``longitude``) first."""
    _check_point(latitude, longitude)
    active = [w for w in warehouses if w.active]

    def key(w: Warehouse) -> tuple[float, int, str]:
        km = haversine_km(latitude, longitude, w.latitude, w.longitude)
        return (round(km, 6), w.priority, w.warehouse_id)

    return tuple(w.warehouse_id for w in sorted(active, key=key))
