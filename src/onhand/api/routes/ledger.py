"""The movement ledger, read from Postgres: filters and a keyset cursor.

Movements come in ledger order ``(at_ms, event_id)``; the opaque cursor names the last
one of a page. What the writer has not drained yet is not here (see its lag).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from onhand.api.apikeys import ApiKey
from onhand.api.problems import Problem, documented
from onhand.api.schemas import ID, MovementPage
from onhand.api.services import RequireScope, get_services, json_response
from onhand.domain import MAX_STOCK
from onhand.ledger.tables import EVENT_TYPES

router = APIRouter(prefix="/v1", tags=["ledger"])
Operator = Annotated[ApiKey, Depends(RequireScope("stock:write"))]
IdQuery = Annotated[str | None, Query(pattern=ID, max_length=64)]
_COLUMNS = (
    "event_id",
    "type",
    "sku",
    "warehouse",
    "d_on_hand",
    "d_held",
    "d_committed",
    "on_hand",
    "held",
    "committed",
    "version",
    "reservation_id",
    "reason",
    "reference",
    "actor",
    "at_ms",
)


def _bad(field: str, message: str) -> Problem:
    return Problem(
        422,
        "invalid-input",
        "Invalid input",
        f"{field}: {message}",
        {"errors": [{"field": field, "message": message}]},
    )


def _decode_cursor(raw: str) -> tuple[int, str]:
    try:
        at, _, eid = base64.urlsafe_b64decode(raw.encode() + b"==").decode().partition(":")
        if not at.isdigit() or not eid or len(eid) > 64:
            raise ValueError
        return int(at), eid
    except (ValueError, UnicodeDecodeError):
        raise _bad("cursor", "malformed") from None


@router.get(
    "/movements",
    response_model=MovementPage,
    responses=documented(401, 403, 422, s422="Invalid filter"),
    summary="Ledger movements, filtered, oldest first, cursor-paginated",
)
async def movements(
    request: Request,
    key: Operator,
    sku: IdQuery = None,
    warehouse: IdQuery = None,
    type: Annotated[str | None, Query(max_length=32)] = None,
    reservation_id: IdQuery = None,
    reference: Annotated[str | None, Query(max_length=128)] = None,
    from_ms: Annotated[int | None, Query(ge=0, le=MAX_STOCK)] = None,
    to_ms: Annotated[int | None, Query(ge=0, le=MAX_STOCK)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    if type is not None and type not in EVENT_TYPES:
        raise _bad("type", f"one of {', '.join(EVENT_TYPES)}")
    where: list[str] = []
    args: list[Any] = []

    def cond(sql: str, value: object) -> None:
        args.append(value)
        where.append(sql.replace("?", f"${len(args)}"))

    for column, value in (
        ("sku", sku),
        ("warehouse", warehouse),
        ("type", type),
        ("reservation_id", reservation_id),
        ("reference", reference),
    ):
        if value is not None:
            cond(f"{column} = ?", value)
    if from_ms is not None:
        cond("at_ms >= ?", from_ms)
    if to_ms is not None:
        cond("at_ms < ?", to_ms)
    if cursor is not None:
        at, eid = _decode_cursor(cursor)
        args.extend((at, eid))
        where.append(f"(at_ms, event_id) > (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = (
        f"SELECT {', '.join(_COLUMNS)} FROM movements"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY at_ms, event_id LIMIT ${len(args)}"
    )
    rows = await get_services(request).store.pool.fetch(sql, *args)
    items = [dict(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        raw = f"{last['at_ms']}:{last['event_id']}".encode()
        next_cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return json_response({"items": items, "next_cursor": next_cursor})
