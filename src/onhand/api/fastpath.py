"""The two hot paths without FastAPI's routing and dependency layers.

Availability reads (product pages) and reservations (checkout) are what run at peak.
:class:`AvailabilityFastPath` answers ``GET /v1/skus/{sku}/availability`` and
``GET /v1/availability?sku=…`` the same way (a verified key with
``availability:read``, allow-listed distinct SKU ids — at most ``MAX_BULK`` — else
the regular route).


``POST /v1/reservations`` is what checkout calls at peak. This pure ASGI middleware
answers it directly when the request is well-formed — a Bearer key that verifies and
carries ``reservations:write``, an ``Idempotency-Key``, a JSON body within the size
limit that validates strictly as :class:`~onhand.api.schemas.ReservationCreate` — by
calling the same code as the route
(:func:`~onhand.api.routes.reservations.create_idempotent`). Anything else is handed, body
included, to the regular route, which answers exactly as documented. So the route, its
OpenAPI entry and its validation stay the contract; this only skips work.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from onhand.api.bodies import read_body, replaying
from onhand.api.problems import Problem, from_engine_error, problem_response
from onhand.api.routes import availability
from onhand.api.routes.reservations import create_idempotent
from onhand.api.schemas import MAX_BULK, ReservationCreate
from onhand.api.services import Services
from onhand.errors import OnhandError

__all__ = ["AvailabilityFastPath", "ReservationFastPath"]

PATH = "/v1/reservations"
ROUTE_SCOPE = "reservations:write"


def _headers(scope: Scope, limit: int) -> tuple[bytes | None, bytes | None, bool, bool]:
    """(authorization, idempotency-key, JSON content type?, declared body too large?)"""
    auth = idem = None
    json_body = oversize = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            auth = value
        elif name == b"idempotency-key":
            idem = value
        elif name == b"content-type":
            json_body = value.split(b";", 1)[0].strip() == b"application/json"
        elif name == b"content-length":
            oversize = not value.isdigit() or int(value) > limit
    return auth, idem, json_body, oversize


class ReservationFastPath:
    """Wraps the whole app (outside Starlette's middleware stack); see the module doc."""

    def __init__(self, app: ASGIApp, limit: int, state: object) -> None:
        self.app, self.limit, self.state = app, limit, state

    def matches(self, scope: Scope) -> bool:
        return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.matches(scope):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        auth, idem, json_body, oversize = _headers(scope, self.limit)
        if oversize:
            await self.app(scope, receive, send)  # BodyLimit answers 413
            return
        read = await read_body(receive, self.limit)
        if read is None:
            return  # the client went away
        body, more = read
        if len(body) > self.limit:
            await self._delegate(scope, receive, send, body, more)
            return
        services: Services | None = getattr(self.state, "services", None)
        if services is None or not json_body or idem is None or auth is None:
            await self._delegate(scope, receive, send, body, False)
            return
        token = auth.decode("latin-1")
        key = await services.api_keys.verify(token[7:].strip()) if token[:7] == "Bearer " else None
        if key is None or not key.allows(ROUTE_SCOPE):
            await self._delegate(scope, receive, send, body, False)
            return
        try:
            order = ReservationCreate.model_validate_json(body)
        except ValidationError:
            await self._delegate(scope, receive, send, body, False)
            return
        try:
            response = await create_idempotent(services, key, order, idem.decode("latin-1"))
        except Problem as problem:
            response = problem_response(problem, None, path=PATH)
        except OnhandError as exc:
            response = problem_response(from_engine_error(exc), None, path=PATH)
        await response(scope, receive, send)
        services.metrics.route(PATH, "POST").done(
            response.status_code, time.perf_counter() - started
        )

    async def _delegate(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, more: bool
    ) -> None:
        """Hand the request to the app, replaying the body already read."""
        await self.app(scope, replaying(receive, body, more), send)


_AVAILABILITY = ("/v1/skus/", "/availability")
SINGLE_ROUTE = "/v1/skus/{sku}/availability"
BULK_PATH = "/v1/availability"
ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def query_values(query_string: bytes, name: str) -> list[str]:
    """The values of ``name`` in a query string, as Starlette parses it (``parse_qsl``
    keeping blank values). Without ``%`` or ``+`` nothing needs unquoting, so the string
    is split directly (``parse_qsl`` unquotes each of a bulk read's up to 500 pairs)."""
    text = query_string.decode("latin-1")
    if "%" in text or "+" in text:
        return [v for k, v in parse_qsl(text, True) if k == name]
    return [v for k, _, v in (pair.partition("=") for pair in text.split("&") if pair) if k == name]


def _bulk_skus(query_string: bytes) -> list[str] | None:
    """The ``sku`` values of a bulk read the route would accept (1..MAX_BULK allow-listed,
    distinct ids), parsed as Starlette parses a query string; else ``None``."""
    skus = query_values(query_string, "sku")
    if not 0 < len(skus) <= MAX_BULK or len(set(skus)) != len(skus):
        return None
    fullmatch = ID.fullmatch
    for sku in skus:
        if fullmatch(sku) is None:
            return None
    return skus


class AvailabilityFastPath:
    """``GET /v1/skus/{sku}/availability`` and ``GET /v1/availability?sku=…`` for
    well-formed requests (module docstring): a verified key with
    ``availability:read`` and allow-listed SKU ids, else the regular route."""

    def __init__(self, app: ASGIApp, state: object) -> None:
        self.app, self.state = app, state
        self.memo = availability.RenderMemo()

    def matches(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "GET":
            return False  # (a lifespan scope has no path)
        path: str = scope["path"]
        return path == BULK_PATH or (
            path.startswith(_AVAILABILITY[0]) and path.endswith(_AVAILABILITY[1])
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        if path == BULK_PATH:
            route, skus = BULK_PATH, _bulk_skus(scope["query_string"])
        else:
            sku = path[len(_AVAILABILITY[0]) : -len(_AVAILABILITY[1])]
            route, skus = SINGLE_ROUTE, [sku] if ID.fullmatch(sku) is not None else None
        services: Services | None = getattr(self.state, "services", None)
        auth = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"if-none-match":
                if_none_match = value.decode("latin-1")
        key = None
        if skus is not None and services is not None and auth is not None and auth[:7] == "Bearer ":
            key = await services.api_keys.verify(auth[7:].strip())
        if key is None or not key.allows("availability:read"):
            await self.app(scope, receive, send)
            return
        assert services is not None and skus is not None
        try:
            found = await services.engine.availability_many(skus)
        except OnhandError:
            await self.app(scope, receive, send)  # the route answers the problem
            return
        bodies, etag = availability.rendered(found, services.metrics, self.memo)
        body = (
            availability.single_body(bodies)
            if route is SINGLE_ROUTE
            else availability.bulk_body(bodies)
        )
        response = availability.answer(body, etag, if_none_match)
        await response(scope, receive, send)
        services.metrics.route(route, "GET").done(
            response.status_code, time.perf_counter() - started
        )
