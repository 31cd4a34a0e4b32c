"""Catalog: warehouses and SKU policies.

Warehouses: Postgres is the record; a change reaches Redis (and every API process)
at once. SKU policies: set in Redis by the ``set_policy`` script, whose ``policy_set``
event is written through to the ledger (``sku_policies``) before the PUT is answered
(:func:`onhand.ledger.barrier.set_policy_durably`), so Postgres is their record too
and the change is live for the very next reservation. One policy is read from Redis,
the list from the ledger.
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from onhand.allocation import Warehouse
from onhand.api.apikeys import ApiKey
from onhand.api.problems import Problem, documented
from onhand.api.schemas import (
    ID,
    PolicyIn,
    PolicyList,
    PolicyOut,
    WarehouseCreate,
    WarehouseIn,
    WarehouseList,
    WarehouseOut,
)
from onhand.api.services import (
    IdempotencyKey,
    RequireScope,
    get_services,
    idempotent,
    json_response,
)
from onhand.domain import SkuPolicy
from onhand.ledger.barrier import set_policy_durably

router = APIRouter(prefix="/v1", tags=["catalog"])
Admin = Annotated[ApiKey, Depends(RequireScope("admin"))]
Operator = Annotated[ApiKey, Depends(RequireScope("stock:write"))]
IdPath = Annotated[str, Path(pattern=ID, max_length=64)]
_PROBLEMS = documented(400, 401, 403, 404, 409, 413, 422, 503)


def render_warehouse(w: Warehouse) -> dict[str, object]:
    return {
        "warehouse_id": w.warehouse_id,
        "name": w.name,
        "latitude": w.latitude,
        "longitude": w.longitude,
        "priority": w.priority,
        "active": w.active,
    }


def render_policy(sku: str, p: SkuPolicy) -> dict[str, object]:
    return {
        "sku": sku,
        "backorder_limit": p.backorder_limit,
        "preorder_limit": p.preorder_limit,
        "preorder_release_ms": p.preorder_release_ms,
        "reorder_point": p.reorder_point,
        "reorder_qty": p.reorder_qty,
        "lead_time_days": p.lead_time_days,
        "max_line_qty": p.max_line_qty,
    }


def _warehouse(wid: str, body: WarehouseIn) -> Warehouse:
    return Warehouse(wid, body.name, body.latitude, body.longitude, body.priority, body.active)


@router.post(
    "/warehouses",
    status_code=201,
    response_model=WarehouseOut,
    responses=_PROBLEMS,
    summary="Create a warehouse",
    tags=["catalog"],
)
async def create_warehouse(
    body: WarehouseCreate, request: Request, key: Admin, idempotency_key: IdempotencyKey
) -> Response:
    async def work() -> Response:
        catalog = get_services(request).catalog
        await catalog.refresh(force=True)
        if catalog.get(body.warehouse_id) is not None:
            raise Problem(
                409, "already-exists", "Warehouse exists", "update it with PUT /v1/warehouses/{id}"
            )
        w = await catalog.upsert(_warehouse(body.warehouse_id, body))
        return json_response(
            render_warehouse(w), 201, {"Location": f"/v1/warehouses/{w.warehouse_id}"}
        )

    return await idempotent(request, key, idempotency_key, body.model_dump_json().encode(), work)


@router.put(
    "/warehouses/{warehouse_id}",
    response_model=WarehouseOut,
    responses=_PROBLEMS,
    summary="Create or replace a warehouse",
)
async def put_warehouse(
    warehouse_id: IdPath, body: WarehouseIn, request: Request, key: Admin
) -> Response:
    w = await get_services(request).catalog.upsert(_warehouse(warehouse_id, body))
    return json_response(render_warehouse(w))


@router.get(
    "/warehouses/{warehouse_id}",
    response_model=WarehouseOut,
    responses=_PROBLEMS,
    summary="Read a warehouse",
)
async def get_warehouse(warehouse_id: IdPath, request: Request, key: Operator) -> Response:
    catalog = get_services(request).catalog
    await catalog.refresh()
    w = catalog.get(warehouse_id)
    if w is None:
        raise Problem(404, "not-found", "Not found", "no such warehouse")
    return json_response(render_warehouse(w))


@router.get(
    "/warehouses",
    response_model=WarehouseList,
    responses=_PROBLEMS,
    summary="List warehouses",
)
async def list_warehouses(request: Request, key: Operator) -> Response:
    catalog = get_services(request).catalog
    await catalog.refresh()
    return json_response({"items": [render_warehouse(w) for w in catalog.all()]})


@router.put(
    "/skus/{sku}/policy",
    response_model=PolicyOut,
    responses=_PROBLEMS,
    summary="Create or replace a SKU's policy (backorder/pre-order limits, reorder, line cap)",
)
async def put_policy(sku: IdPath, body: PolicyIn, request: Request, key: Admin) -> Response:
    policy = SkuPolicy(**body.model_dump())
    services = get_services(request)
    await set_policy_durably(
        services.engine, services.store, sku, policy, actor=f"key:{key.key_id}"
    )
    return json_response(render_policy(sku, policy))


@router.get(
    "/skus/{sku}/policy",
    response_model=PolicyOut,
    responses=_PROBLEMS,
    summary="Read a SKU's policy (defaults if never set)",
)
async def get_policy(sku: IdPath, request: Request, key: Operator) -> Response:
    availability = await get_services(request).engine.availability(sku)
    return json_response(render_policy(sku, availability.policy))


def _cursor(raw: str | None) -> str:
    if raw is None:
        return ""
    try:
        value = base64.urlsafe_b64decode(raw.encode() + b"==").decode()
    except (ValueError, UnicodeDecodeError):
        value = "\0"
    if not value or len(value) > 64 or not all(c.isalnum() or c in "._-" for c in value):
        raise Problem(
            422,
            "invalid-input",
            "Invalid input",
            "malformed cursor",
            {"errors": [{"field": "cursor", "message": "malformed"}]},
        )
    return value


@router.get(
    "/sku-policies",
    response_model=PolicyList,
    responses=_PROBLEMS,
    summary="List SKU policies from the ledger (by SKU, cursor-paginated)",
)
async def list_policies(
    request: Request,
    key: Operator,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    after = _cursor(cursor)
    rows = await get_services(request).store.pool.fetch(
        "SELECT * FROM sku_policies WHERE sku > $1 ORDER BY sku LIMIT $2", after, limit + 1
    )
    items = [
        render_policy(
            r["sku"],
            SkuPolicy(
                r["backorder_limit"],
                r["preorder_limit"],
                r["preorder_release_ms"],
                r["reorder_point"],
                r["reorder_qty"],
                r["lead_time_days"],
                r["max_line_qty"],
            ),
        )
        for r in rows[:limit]
    ]
    next_cursor = (
        base64.urlsafe_b64encode(rows[limit - 1]["sku"].encode()).decode().rstrip("=")
        if len(rows) > limit
        else None
    )
    return json_response({"items": items, "next_cursor": next_cursor})
