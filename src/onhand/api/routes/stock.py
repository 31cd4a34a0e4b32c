"""Stock operations for operations staff: receipts, adjustments, counts, transfers.

Each single operation is one atomic script. Bulk forms (receipts, adjustments) are not
atomic as a whole: every item runs on its own and the answer is ``207 Multi-Status``
with one result per item, in order. A stocktake (``stock-counts``) needs ``If-Match``
with the record version it was counted against (428 without, 412 on a mismatch).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from starlette.responses import Response

from onhand.api.apikeys import ApiKey
from onhand.api.problems import Problem, documented, from_engine_error
from onhand.api.schemas import (
    ID,
    AdjustmentIn,
    BulkAdjustments,
    BulkCounts,
    BulkReceipts,
    BulkResult,
    CountIn,
    CountItemIn,
    ReceiptIn,
    SafetyStockIn,
    StockLevelOut,
    TransferIn,
    TransferOut,
)
from onhand.api.services import (
    IdempotencyKey,
    RequireScope,
    Services,
    get_services,
    idempotent,
    json_response,
)
from onhand.domain import StockLevel
from onhand.errors import EngineUnavailable, OnhandError

router = APIRouter(prefix="/v1", tags=["stock"])
Operator = Annotated[ApiKey, Depends(RequireScope("stock:write"))]
IdPath = Annotated[str, Path(pattern=ID, max_length=64)]
_PROBLEMS = documented(400, 401, 403, 409, 412, 413, 422, 428, 503)


def render(level: StockLevel) -> dict[str, object]:
    return {
        "sku": level.sku,
        "warehouse": level.warehouse,
        "on_hand": level.on_hand,
        "held": level.held,
        "committed": level.committed,
        "safety_stock": level.safety_stock,
        "available": level.available,
        "low_stock": level.low,
        "version": level.version,
    }


def _level(level: StockLevel, status: int = 200) -> Response:
    return json_response(render(level), status, {"ETag": f'"{level.version}"'})


def _actor(key: ApiKey) -> str:
    return f"key:{key.key_id}"


@router.get(
    "/stock-levels/{sku}/{warehouse}",
    response_model=StockLevelOut,
    responses=_PROBLEMS,
    summary="One stock record; its ETag is the version a stocktake must match",
)
async def get_stock_level(
    sku: IdPath, warehouse: IdPath, request: Request, key: Operator
) -> Response:
    return _level(await get_services(request).engine.stock_level(sku, warehouse))


async def _receive(services: Services, key: ApiKey, item: ReceiptIn) -> StockLevel:
    return await services.engine.receive(
        item.sku, item.warehouse, item.qty, reference=item.reference, actor=_actor(key)
    )


async def _count(services: Services, key: ApiKey, item: CountItemIn) -> StockLevel:
    return await services.engine.set_count(
        item.sku,
        item.warehouse,
        item.count,
        expected_version=item.expected_version,
        reference=item.reference,
        actor=_actor(key),
    )


async def _adjust(services: Services, key: ApiKey, item: AdjustmentIn) -> StockLevel:
    return await services.engine.adjust(
        item.sku,
        item.warehouse,
        item.delta,
        reason=item.reason,
        reference=item.reference,
        actor=_actor(key),
    )


@router.post(
    "/stock-receipts",
    status_code=201,
    response_model=StockLevelOut,
    responses=_PROBLEMS,
    summary="Receive stock (on_hand += qty)",
)
async def receive(
    body: ReceiptIn, request: Request, key: Operator, idempotency_key: IdempotencyKey
) -> Response:
    async def work() -> Response:
        return _level(await _receive(get_services(request), key, body), 201)

    return await idempotent(request, key, idempotency_key, body.model_dump_json().encode(), work)


@router.post(
    "/adjustments",
    status_code=201,
    response_model=StockLevelOut,
    responses=_PROBLEMS,
    summary="Adjust on_hand for a reason (damaged, lost, found, returned, correction)",
)
async def adjust(
    body: AdjustmentIn, request: Request, key: Operator, idempotency_key: IdempotencyKey
) -> Response:
    async def work() -> Response:
        return _level(await _adjust(get_services(request), key, body), 201)

    return await idempotent(request, key, idempotency_key, body.model_dump_json().encode(), work)


def _if_match(raw: str | None) -> int:
    if raw is None:
        raise Problem(
            428,
            "precondition-required",
            "If-Match required",
            "send If-Match with the record's ETag (its version)",
        )
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit() or len(value) > 16:
        raise Problem(412, "precondition-failed", "If-Match is not a record version", raw)
    return int(value)


@router.post(
    "/stock-counts",
    status_code=201,
    response_model=StockLevelOut,
    responses=_PROBLEMS,
    summary="Stocktake: set on_hand to the counted quantity (If-Match: record version)",
)
async def count(
    body: CountIn,
    request: Request,
    key: Operator,
    idempotency_key: IdempotencyKey,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> Response:
    async def work() -> Response:
        expected = _if_match(if_match)
        level = await get_services(request).engine.set_count(
            body.sku,
            body.warehouse,
            body.count,
            expected_version=expected,
            reference=body.reference,
            actor=_actor(key),
        )
        return _level(level, 201)

    canonical = body.model_dump_json().encode() + (if_match or "").encode()
    return await idempotent(request, key, idempotency_key, canonical, work)


@router.post(
    "/transfers",
    status_code=201,
    response_model=TransferOut,
    responses=_PROBLEMS,
    summary="Move available units of one SKU between two warehouses, atomically",
)
async def transfer(
    body: TransferIn, request: Request, key: Operator, idempotency_key: IdempotencyKey
) -> Response:
    async def work() -> Response:
        if body.source == body.destination:
            raise Problem(
                422,
                "invalid-input",
                "Invalid input",
                "source equals destination",
                {"errors": [{"field": "destination", "message": "same as source"}]},
            )
        src, dst = await get_services(request).engine.transfer(
            body.sku,
            body.source,
            body.destination,
            body.qty,
            reference=body.reference,
            actor=_actor(key),
        )
        return json_response({"source": render(src), "destination": render(dst)}, 201)

    return await idempotent(request, key, idempotency_key, body.model_dump_json().encode(), work)


@router.put(
    "/stock-levels/{sku}/{warehouse}/safety-stock",
    response_model=StockLevelOut,
    responses=_PROBLEMS,
    summary="Set the units of a record that are never sold",
)
async def set_safety_stock(
    sku: IdPath, warehouse: IdPath, body: SafetyStockIn, request: Request, key: Operator
) -> Response:
    engine = get_services(request).engine
    return _level(await engine.set_safety_stock(sku, warehouse, body.qty, actor=_actor(key)))


async def _bulk(
    request: Request,
    key: ApiKey,
    idempotency_key: str,
    body: BulkReceipts | BulkAdjustments | BulkCounts,
    run: Callable[[Services, ApiKey, Any], Awaitable[StockLevel]],
) -> Response:
    """Apply each item on its own; 207 with one result per item, under the key.

    While nothing has been applied, Redis being fenced or unreachable fails the whole
    call with 503 (the key is released, the retry starts afresh); once an item applied,
    the 207 is the answer and lists which items to send again.
    """
    services, instance = get_services(request), request.url.path

    async def work() -> Response:
        results: list[dict[str, object]] = []
        applied = 0
        for i, item in enumerate(body.items):
            try:
                level = await run(services, key, item)
            except OnhandError as exc:
                if not applied and isinstance(exc, EngineUnavailable):
                    raise
                problem = from_engine_error(exc)
                results.append(
                    {
                        "index": i,
                        "status": problem.status,
                        "level": None,
                        "problem": problem.body(instance),
                    }
                )
                continue
            applied += 1
            results.append({"index": i, "status": 201, "level": render(level), "problem": None})
        return json_response({"results": results}, 207)

    return await idempotent(request, key, idempotency_key, body.model_dump_json().encode(), work)


@router.post(
    "/stock-receipts:bulk",
    status_code=207,
    response_model=BulkResult,
    responses=_PROBLEMS,
    summary="Receive many items; each applies on its own (207, one result per item)",
)
async def receive_bulk(
    body: BulkReceipts, request: Request, key: Operator, idempotency_key: IdempotencyKey
) -> Response:
    return await _bulk(request, key, idempotency_key, body, _receive)


@router.post(
    "/stock-counts:bulk",
    status_code=207,
    response_model=BulkResult,
    responses=_PROBLEMS,
    summary="Stocktake many records; each applies on its own against its expected_version",
)
async def count_bulk(
    body: BulkCounts, request: Request, key: Operator, idempotency_key: IdempotencyKey
) -> Response:
    return await _bulk(request, key, idempotency_key, body, _count)


@router.post(
    "/adjustments:bulk",
    status_code=207,
    response_model=BulkResult,
    responses=_PROBLEMS,
    summary="Adjust many items; each applies on its own (207, one result per item)",
)
async def adjust_bulk(
    body: BulkAdjustments, request: Request, key: Operator, idempotency_key: IdempotencyKey
) -> Response:
    return await _bulk(request, key, idempotency_key, body, _adjust)
