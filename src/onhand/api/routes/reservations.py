"""Reservations: create (hold), get, confirm, release, extend, fulfill, cancel.

A reservation's id is ``<client_id>.<order_id>``: one reservation per order of each
client, idempotent in the engine itself (a retry with the same order and lines gets
the same hold back, whatever happened to its Idempotency-Key record). A client sees
and changes only its own reservations; another client's answer 404 (admins see all).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from onhand.allocation import nearest
from onhand.api.apikeys import ApiKey
from onhand.api.idempotency import Idempotency, Ticket, fingerprint, parse_key
from onhand.api.problems import Problem, documented
from onhand.api.schemas import (
    ID,
    FixedAllocation,
    NearestAllocation,
    ReservationCreate,
    ReservationExtend,
    ReservationOut,
)
from onhand.api.services import (
    IdempotencyKey,
    RequireScope,
    Services,
    answer_under,
    get_services,
    idempotent,
    json_response,
    replayed,
    run_idempotent,
)
from onhand.domain import MAX_CANDIDATES, Line, Reservation, ReservationStatus, ReserveRequest
from onhand.engine.redis import RedisEngine
from onhand.errors import IdempotencyConflict, InsufficientStock, OnhandError

router = APIRouter(prefix="/v1", tags=["reservations"])
Writer = Annotated[ApiKey, Depends(RequireScope("reservations:write"))]
ReservationId = Annotated[str, Path(pattern=ID, max_length=64)]
PATH = "/v1/reservations"
_PROBLEMS = documented(
    400, 401, 403, 404, 409, 413, 422, 429, 503,
    s404="No such reservation (or another client's)",
    s409="Insufficient stock, invalid transition or request in flight",
    s422="Invalid input, or an Idempotency-Key/order id reused differently",
)  # fmt: skip


def render(res: Reservation) -> dict[str, object]:
    return {
        "reservation_id": res.reservation_id,
        "order_id": res.reservation_id.partition(".")[2] or res.reservation_id,
        "status": res.status.value,
        "created_ms": res.created_ms,
        "deadline_ms": res.deadline_ms,
        "allocations": [
            {"line": a.line, "sku": a.sku, "warehouse": a.warehouse, "qty": a.qty}
            for a in res.allocations
        ],
        "at_ms": res.at_ms,
    }


def _candidates(services: Services, body: ReservationCreate) -> tuple[str, ...]:
    spec = body.allocation
    if isinstance(spec, FixedAllocation):
        return (spec.warehouse,)
    if isinstance(spec, NearestAllocation):
        ordered = nearest(services.catalog.all(), spec.latitude, spec.longitude)
    else:
        ordered = services.catalog.by_priority()
    if not ordered:
        raise Problem(
            409,
            "no-warehouses",
            "No active warehouse",
            "the catalog has no active warehouse to allocate from",
        )
    return ordered[:MAX_CANDIDATES]


def _too_many_holds(limit: int, retry_after_ms: int) -> Problem:
    return Problem(
        429,
        "too-many-holds",
        "Too many active holds",
        f"at most {limit} live holds per client",
        {"limit": limit},
        {"Retry-After": str(max(1, -(-retry_after_ms // 1000)))},
    )


def _hold_limit(services: Services, key: ApiKey) -> int:
    return key.max_active_holds or services.settings.client_max_active_holds


async def _admit(services: Services, key: ApiKey, rid: str, ttl_ms: int) -> None:
    limit = _hold_limit(services, key)
    code, _, out = await services.engine.script(
        "admit",
        [services.engine.keys.client_holds(key.client_id)],
        ["add", rid, str(ttl_ms), str(limit)],
    )
    if code == "FULL":
        raise _too_many_holds(limit, int(out[0]))


async def _drop(services: Services, key: ApiKey, rid: str) -> None:
    await services.engine.script(
        "admit", [services.engine.keys.client_holds(key.client_id)], ["drop", rid]
    )


async def _admit_until(services: Services, key: ApiKey, rid: str, res: Reservation) -> None:
    """Make ``rid``'s hold slot end with the hold itself, not with the repeat's TTL.

    A replayed pending hold keeps its original deadline; the admit before it stretched the
    slot to now + the requested TTL, which would count against the client's limit after
    the hold itself expired. (admit only raises a slot's deadline, so drop and add again.)
    """
    await _drop(services, key, rid)
    await _admit(services, key, rid, max(1, res.deadline_ms - res.at_ms))


async def _settle_slot(services: Services, key: ApiKey, rid: str) -> None:
    """After a conflicting repeat of ``rid``: keep its hold slot only while it is pending.

    The admit before the reserve took (or stretched) a slot for ``rid``; if the existing
    reservation is confirmed, released, expired or gone, nothing holds it any more.
    """
    try:
        existing = await services.engine.get_reservation(rid)
    except OnhandError:
        existing = None
    if existing is None or existing.status is not ReservationStatus.PENDING:
        await _drop(services, key, rid)
    else:
        await _admit_until(services, key, rid, existing)


async def plan(services: Services, key: ApiKey, body: ReservationCreate) -> ReserveRequest:
    """The engine request for ``body``, after the checks that precede admission (line
    quantity cap: 429; no active warehouse: 409). Changes nothing."""
    settings = services.settings
    cap = key.max_line_qty or settings.client_max_line_qty
    over = [ln.sku for ln in body.lines if ln.qty > cap]
    if over:
        raise Problem(
            429,
            "line-quantity-limit",
            "Line quantity above the client limit",
            f"at most {cap} units per line",
            {"limit": cap, "skus": over},
            {"Retry-After": "60"},
        )
    await services.catalog.refresh()
    candidates = _candidates(services, body)
    ttl_ms = body.ttl_ms or settings.hold_ttl_ms
    rid = f"{key.client_id}.{body.order_id}"
    lines = tuple(Line(ln.sku, ln.qty, candidates, allow_split=ln.allow_split) for ln in body.lines)
    return ReserveRequest(rid, lines, ttl_ms, owner=key.client_id, actor=f"key:{key.key_id}")


async def hold(services: Services, key: ApiKey, request_: ReserveRequest) -> Response:
    """Admit and reserve ``request_`` (two script calls; :func:`create_idempotent`
    makes them one)."""
    await _admit(services, key, request_.reservation_id, request_.ttl_ms)
    return await _reserved(services, key, request_, services.engine.reserve(request_))


async def _reserved(
    services: Services, key: ApiKey, request_: ReserveRequest, reserving: Awaitable[Reservation]
) -> Response:
    """The answer for ``request_`` once admitted, from ``reserving`` (its reservation or
    its error); the hold slot is kept only for a pending hold, with the hold's deadline."""
    rid = request_.reservation_id
    try:
        res = await reserving
    except IdempotencyConflict:
        services.metrics.reservation("conflict")
        await _settle_slot(services, key, rid)
        raise
    except InsufficientStock:
        services.metrics.reservation("insufficient")
        await _drop(services, key, rid)
        raise
    except OnhandError:
        services.metrics.reservation("error")
        await _drop(services, key, rid)
        raise
    if res.status is not ReservationStatus.PENDING:
        await _drop(services, key, rid)
    elif res.replayed:
        await _admit_until(services, key, rid, res)
    services.metrics.reservation("replayed" if res.replayed else "held")
    return json_response(
        render(res), 200 if res.replayed else 201, {"Location": f"/v1/reservations/{rid}"}
    )


async def create(services: Services, key: ApiKey, body: ReservationCreate) -> Response:
    """Hold an order for ``key``'s client: :func:`plan`, then :func:`hold`."""
    try:
        request_ = await plan(services, key, body)
    except Problem as problem:
        if problem.slug == "line-quantity-limit":
            services.metrics.reservation("limited")
        raise
    return await hold(services, key, request_)


async def create_idempotent(
    services: Services, key: ApiKey, body: ReservationCreate, raw_key: str
) -> Response:
    """``POST /v1/reservations`` under its Idempotency-Key (the route and the fast path).

    When :func:`plan` passes, the request is :func:`hold_once`; otherwise it runs as
    :func:`create`, whose answer (the same problem) is stored under the key as always.
    """
    canonical = body.model_dump_json().encode()
    try:
        request_ = await plan(services, key, body)
    except (Problem, OnhandError):
        request_ = None
    if request_ is None:
        return await run_idempotent(
            services, key.client_id, "POST", PATH, raw_key, canonical,
            lambda: create(services, key, body),
        )  # fmt: skip
    return await hold_once(services, key, request_, raw_key, canonical)


async def hold_once(
    services: Services, key: ApiKey, request_: ReserveRequest, raw_key: str, canonical: bytes
) -> Response:
    """The Idempotency-Key record, the hold admission and the reservation in one script
    call (``lua/hold.lua``). A new hold comes back answered and its answer stored; a
    stored answer is replayed; anything else (the client at its hold limit, a repeat,
    a conflict, a shortfall, an error) is answered and stored as the separate calls
    would, from the reply, under the record the call took."""
    idem, engine = services.idempotency, services.engine
    fp = fingerprint("POST", PATH, canonical)
    ticket = Ticket(idem.record_key(key.client_id, parse_key(raw_key)), fp, idem.new_token())
    limit = _hold_limit(services, key)
    keys, args = hold_arguments(services.engine, idem, ticket, limit, request_)
    failed: OnhandError | None = None
    try:
        code, at, out = await engine.script("hold", keys, args)
    except OnhandError as exc:
        failed, code, at, out = exc, "", 0, []
    if code == "HELD":
        services.metrics.reservation("held")
        location = f"{PATH}/{request_.reservation_id}"
        return Response(out[0].encode(), 201, {"Location": location}, "application/json")
    if code == "FOUND":
        return replayed(idem.found(out[0], fp))

    async def outcome() -> Reservation:
        if failed is not None:
            raise failed
        return engine.reserve_outcome(request_, code, at, out)

    async def work() -> Response:
        if code == "FULL":
            raise _too_many_holds(limit, int(out[0]))
        return await _reserved(services, key, request_, outcome())

    return await answer_under(services, ticket, PATH, work)


def hold_arguments(
    engine: RedisEngine,
    idem: Idempotency,
    ticket: Ticket,
    limit: int,
    request_: ReserveRequest,
) -> tuple[list[str], list[str]]:
    """The KEYS and the ARGV after the clock of ``lua/hold.lua``: ``request_`` for the
    client that owns it (``request_.owner``), under ``ticket``'s record."""
    rkeys, rargs = engine.reserve_arguments(request_)
    keys = [engine.keys.client_holds(request_.owner), ticket.redis_key, *rkeys]
    args = [ticket.fingerprint, ticket.token, str(idem.lock_ms), str(idem.ttl_ms), str(limit)]
    return keys, [*args, f"{PATH}/", *rargs]


@router.post(
    "/reservations",
    status_code=201,
    response_model=ReservationOut,
    responses={
        200: {"model": ReservationOut, "description": "The order was held before (same lines)"},
        **_PROBLEMS,
    },
    summary="Hold stock for an order (all lines or nothing)",
)
async def create_reservation(
    body: ReservationCreate, request: Request, key: Writer, idempotency_key: IdempotencyKey
) -> Response:
    return await create_idempotent(get_services(request), key, body, idempotency_key)


async def _owned(services: Services, key: ApiKey, rid: str) -> Reservation:
    res = await services.engine.get_reservation(rid)
    if res.owner != key.client_id and "admin" not in key.scopes:
        raise Problem(404, "not-found", "Not found", "no such reservation")
    return res


@router.get(
    "/reservations/{reservation_id}",
    response_model=ReservationOut,
    responses=_PROBLEMS,
    summary="Read a reservation",
)
async def get_reservation(reservation_id: ReservationId, request: Request, key: Writer) -> Response:
    return json_response(render(await _owned(get_services(request), key, reservation_id)))


async def _transition(request: Request, key: Writer, rid: str, action: str) -> Response:
    services = get_services(request)
    await _owned(services, key, rid)
    actor = f"key:{key.key_id}"
    engine = services.engine
    if action == "confirm":
        started = time.perf_counter()
        res = await services.confirms.confirm(rid, actor=actor)
        services.metrics.confirm_seconds.observe(time.perf_counter() - started)
    elif action == "release":
        res = await engine.release(rid, actor=actor)
    elif action == "fulfill":
        res = await engine.fulfill(rid, actor=actor)
    else:
        res = await engine.cancel(rid, actor=actor)
    if action in ("confirm", "release"):
        await _drop(services, key, rid)
    return json_response(render(res))


def _transition_route(action: str, summary: str) -> None:
    async def handler(
        reservation_id: ReservationId,
        request: Request,
        key: Writer,
        idempotency_key: IdempotencyKey,
    ) -> Response:
        return await idempotent(
            request,
            key,
            idempotency_key,
            b"",
            lambda: _transition(request, key, reservation_id, action),
        )

    handler.__name__ = f"{action}_reservation"
    router.add_api_route(
        f"/reservations/{{reservation_id}}:{action}",
        handler,
        methods=["POST"],
        response_model=ReservationOut,
        responses=_PROBLEMS,
        summary=summary,
    )


_transition_route("confirm", "Confirm a hold (durable in the ledger before the answer)")
_transition_route("release", "Release a hold back to stock")
_transition_route("fulfill", "Ship a confirmed reservation (stock leaves the warehouse)")
_transition_route("cancel", "Cancel a confirmed reservation (stock becomes available)")


async def _extend(request: Request, key: ApiKey, rid: str, body: ReservationExtend) -> Response:
    services = get_services(request)
    await _owned(services, key, rid)
    res = await services.engine.extend(rid, body.ttl_ms, actor=f"key:{key.key_id}")
    if res.status is ReservationStatus.PENDING:
        await _admit(services, key, rid, max(1, res.deadline_ms - res.at_ms))
    return json_response(render(res))


@router.post(
    "/reservations/{reservation_id}:extend",
    response_model=ReservationOut,
    responses=_PROBLEMS,
    summary="Move a pending hold's deadline (never earlier; capped at the maximum lifetime)",
)
async def extend_reservation(
    reservation_id: ReservationId,
    body: ReservationExtend,
    request: Request,
    key: Writer,
    idempotency_key: IdempotencyKey,
) -> Response:
    return await idempotent(
        request,
        key,
        idempotency_key,
        body.model_dump_json().encode(),
        lambda: _extend(request, key, reservation_id, body),
    )
