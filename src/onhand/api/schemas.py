"""Request and response bodies of the HTTP API (pydantic, strict).

Input is strict: JSON integers only (no ``"5"``, ``1.0``, ``true``), bounded; ids match
``[A-Za-z0-9._-]{1,64}``; unknown fields are refused. Responses are documented here
and built as plain dicts by the routes (no second validation on the hot path); the
schemathesis run in the test suite checks that they match these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from onhand.domain import MAX_LINES, MAX_QTY, MAX_STOCK, MAX_TTL_MS

ID = r"^[A-Za-z0-9._-]{1,64}$"
Id = Annotated[str, Field(pattern=ID, min_length=1, max_length=64)]
OrderId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,47}$", min_length=1, max_length=47)]
ClientId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$", min_length=1, max_length=16)]
Qty = Annotated[int, Field(ge=1, le=MAX_QTY)]
Count = Annotated[int, Field(ge=0, le=MAX_STOCK)]
Text = Annotated[str, Field(pattern=r"^[\x20-\x7e]*$", max_length=128)]
TtlMs = Annotated[int, Field(ge=1_000, le=MAX_TTL_MS)]
Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
Reason = Literal["damaged", "lost", "found", "returned", "correction"]
Scope = Literal["availability:read", "reservations:write", "stock:write", "admin"]
MAX_BULK = 500


def _non_zero(value: int) -> int:
    if value == 0:
        raise ValueError("must not be 0")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# -- reservations -------------------------------------------------------------------------
class FixedAllocation(Strict):
    """Every line from one warehouse."""

    mode: Literal["fixed"]
    warehouse: Id


class NearestAllocation(Strict):
    """Candidates nearest to the ship-to point first (great-circle distance)."""

    mode: Literal["nearest"]
    latitude: Latitude
    longitude: Longitude


class PriorityAllocation(Strict):
    """Candidates by configured warehouse priority (lowest first)."""

    mode: Literal["priority"]


AllocationSpec = Annotated[
    FixedAllocation | NearestAllocation | PriorityAllocation, Field(discriminator="mode")
]


class LineIn(Strict):
    sku: Id
    qty: Qty
    allow_split: bool = Field(False, description="May the line be spread over warehouses?")


class ReservationCreate(Strict):
    order_id: OrderId = Field(description="Your order id; one reservation per order.")
    lines: Annotated[list[LineIn], Field(min_length=1, max_length=MAX_LINES)]
    ttl_ms: TtlMs | None = Field(None, description="Hold time; the server default if absent.")
    allocation: AllocationSpec | None = Field(
        None, description="How to choose warehouses; warehouse priority if absent."
    )


class ReservationExtend(Strict):
    ttl_ms: TtlMs


class AllocationOut(BaseModel):
    line: int
    sku: str
    warehouse: str
    qty: int


class ReservationOut(BaseModel):
    reservation_id: str
    order_id: str
    status: Literal["pending", "confirmed", "released", "expired", "fulfilled", "cancelled"]
    created_ms: int
    deadline_ms: int
    allocations: list[AllocationOut]
    at_ms: int


# -- availability -------------------------------------------------------------------------
class WarehouseAvailability(BaseModel):
    warehouse: str
    available: int
    on_hand: int
    held: int
    committed: int
    safety_stock: int
    low_stock: bool
    version: int


class Availability(BaseModel):
    sku: str
    available: int
    on_hand: int
    held: int
    committed: int
    backorder_remaining: int
    preorder_remaining: int
    low_stock: bool
    expected_restock_ms: int | None
    warehouses: list[WarehouseAvailability]
    at_ms: int


class AvailabilityList(BaseModel):
    items: list[Availability]


# -- stock operations ---------------------------------------------------------------------
class ReceiptIn(Strict):
    sku: Id
    warehouse: Id
    qty: Qty
    reference: Text = ""


class AdjustmentIn(Strict):
    sku: Id
    warehouse: Id
    delta: Annotated[
        int,
        Field(ge=-MAX_QTY, le=MAX_QTY, json_schema_extra={"not": {"const": 0}}),
        AfterValidator(_non_zero),
    ]
    reason: Reason
    reference: Text = ""


class CountIn(Strict):
    sku: Id
    warehouse: Id
    count: Count
    reference: Text = ""


class TransferIn(Strict):
    sku: Id
    source: Id
    destination: Id
    qty: Qty
    reference: Text = ""


class SafetyStockIn(Strict):
    qty: Count


class BulkReceipts(Strict):
    items: Annotated[list[ReceiptIn], Field(min_length=1, max_length=MAX_BULK)]


class BulkAdjustments(Strict):
    items: Annotated[list[AdjustmentIn], Field(min_length=1, max_length=MAX_BULK)]


class CountItemIn(CountIn):
    expected_version: Annotated[
        Count, Field(description="The record version the count was taken at (its ETag)")
    ]


class BulkCounts(Strict):
    items: Annotated[list[CountItemIn], Field(min_length=1, max_length=MAX_BULK)]


class StockLevelOut(BaseModel):
    sku: str
    warehouse: str
    on_hand: int
    held: int
    committed: int
    safety_stock: int
    available: int
    low_stock: bool
    version: int


class TransferOut(BaseModel):
    source: StockLevelOut
    destination: StockLevelOut


class BulkItemResult(BaseModel):
    index: int
    status: int
    level: StockLevelOut | None = None
    problem: dict[str, object] | None = None


class BulkResult(BaseModel):
    results: list[BulkItemResult]


# -- catalog ------------------------------------------------------------------------------
class WarehouseIn(Strict):
    name: Text = ""
    latitude: Latitude = 0.0
    longitude: Longitude = 0.0
    priority: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    active: bool = True


class WarehouseCreate(WarehouseIn):
    warehouse_id: Id


class WarehouseOut(BaseModel):
    warehouse_id: str
    name: str
    latitude: float
    longitude: float
    priority: int
    active: bool


class WarehouseList(BaseModel):
    items: list[WarehouseOut]


class PolicyIn(Strict):
    backorder_limit: Count = 0
    preorder_limit: Count = 0
    preorder_release_ms: Count = 0
    reorder_point: Count = 0
    reorder_qty: Count = 0
    lead_time_days: Annotated[int, Field(ge=0, le=3650)] = 0
    max_line_qty: Qty = MAX_QTY


class PolicyOut(BaseModel):
    sku: str
    backorder_limit: int
    preorder_limit: int
    preorder_release_ms: int
    reorder_point: int
    reorder_qty: int
    lead_time_days: int
    max_line_qty: int


class PolicyList(BaseModel):
    items: list[PolicyOut]
    next_cursor: str | None


# -- ledger -------------------------------------------------------------------------------
class MovementOut(BaseModel):
    event_id: str
    type: str
    sku: str
    warehouse: str | None
    d_on_hand: int
    d_held: int
    d_committed: int
    on_hand: int | None
    held: int | None
    committed: int | None
    version: int
    reservation_id: str | None
    reason: str | None
    reference: str | None
    actor: str | None
    at_ms: int


class MovementPage(BaseModel):
    items: list[MovementOut]
    next_cursor: str | None


# -- API keys -----------------------------------------------------------------------------
class KeyCreate(Strict):
    client_id: ClientId
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=4)]
    name: Text = ""
    max_line_qty: Qty | None = None
    max_active_holds: Annotated[int, Field(ge=1, le=MAX_QTY)] | None = None


class KeyOut(BaseModel):
    key_id: str
    client_id: str
    name: str
    scopes: list[str]
    max_line_qty: int | None
    max_active_holds: int | None
    created_at: str
    revoked: bool


class KeyCreated(KeyOut):
    token: str | None = Field(
        description="The whole key. Shown once; store it now (null on a replay)."
    )


class KeyList(BaseModel):
    items: list[KeyOut]
