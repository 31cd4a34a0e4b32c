"""A demo catalog for a first start: warehouses with coordinates, SKUs with policies
and stock. Seeding happens once: it does nothing when the ledger already has
warehouses. Every change goes through the engine, so it is in the ledger like any
other movement.
"""

from __future__ import annotations

from onhand.allocation import Warehouse
from onhand.catalog import WarehouseCatalog
from onhand.domain import SkuPolicy
from onhand.engine.redis import RedisEngine

__all__ = ["DEMO_SKUS", "DEMO_WAREHOUSES", "seed_demo"]

DEMO_WAREHOUSES = (
    Warehouse("BER", "Berlin", 52.5200, 13.4050, 10),
    Warehouse("HAM", "Hamburg", 53.5511, 9.9937, 20),
    Warehouse("MUC", "Munich", 48.1351, 11.5820, 30),
    Warehouse("FRA", "Frankfurt", 50.1109, 8.6821, 40),
)
DEMO_SKUS: tuple[tuple[str, SkuPolicy, dict[str, int]], ...] = (
    ("TSHIRT-BLK-M", SkuPolicy(reorder_point=20, reorder_qty=200, lead_time_days=7),
     {"BER": 120, "HAM": 80, "MUC": 60, "FRA": 40}),
    ("SNEAKER-42", SkuPolicy(reorder_point=10, lead_time_days=14, max_line_qty=2),
     {"BER": 25, "MUC": 15}),
    ("CONSOLE-X", SkuPolicy(backorder_limit=50, max_line_qty=1, lead_time_days=21),
     {"FRA": 5}),
    ("MUG-WHITE", SkuPolicy(reorder_point=50), {"BER": 500, "HAM": 500, "MUC": 500}),
    ("BOOK-PREORDER", SkuPolicy(preorder_limit=1000, preorder_release_ms=4_102_444_800_000),
     {}),
)  # fmt: skip


async def seed_demo(engine: RedisEngine, catalog: WarehouseCatalog) -> bool:
    """Seed the demo catalog unless warehouses exist already. True if it seeded."""
    if catalog.pool is None:
        raise RuntimeError("seeding needs Postgres")
    if await catalog.pool.fetchval("SELECT count(*) FROM warehouses"):
        return False
    for w in DEMO_WAREHOUSES:
        await catalog.upsert(w)
    for sku, policy, stock in DEMO_SKUS:
        await engine.set_policy(sku, policy, actor="seed")
        for wh, qty in stock.items():
            await engine.receive(sku, wh, qty, reference="demo-seed", actor="seed")
    return True
