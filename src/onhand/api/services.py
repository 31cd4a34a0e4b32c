"""What every request handler needs, built once per process by the app's lifespan.

Also the two request-scoped dependencies every route uses: :class:`RequireScope` (the
API key behind the request, with the scope the route declares) and
:func:`idempotent` (the Idempotency-Key protocol around a POST's work).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import orjson
from fastapi import Depends, Header, Request
from starlette.responses import Response

from onhand.api.apikeys import ApiKey, KeyStore
from onhand.api.idempotency import Idempotency, Stored, Ticket, fingerprint, parse_key
from onhand.api.metrics import ApiMetrics
from onhand.api.problems import Problem, from_engine_error, problem_response
from onhand.catalog import WarehouseCatalog
from onhand.engine.redis import RedisEngine
from onhand.errors import EngineUnavailable, OnhandError
from onhand.ledger.barrier import DurableConfirms
from onhand.ledger.store import LedgerStore
from onhand.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "RequireScope",
    "answer_under",
    "replayed",
    "Services",
    "get_services",
    "idempotent",
    "json_response",
    "run_idempotent",
]


@dataclass
class Services:
    settings: Settings
    engine: RedisEngine
    store: LedgerStore
    confirms: DurableConfirms
    api_keys: KeyStore
    idempotency: Idempotency
    catalog: WarehouseCatalog
    metrics: ApiMetrics


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


_STORED_HEADERS = (b"etag", b"location", b"retry-after")
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="onhand"'}


class RequireScope:
    """Dependency: the caller's API key, which must carry ``scope`` (or ``admin``).

    401 without a valid live key (``Authorization: Bearer onh_…``), 403 with a key that
    lacks the scope. The route table test walks every route for one of these.
    """

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self,
        request: Request,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> ApiKey:
        if authorization is None or not authorization.startswith("Bearer "):
            raise Problem(
                401,
                "unauthorized",
                "API key required",
                "send Authorization: Bearer <key>",
                headers=_UNAUTHORIZED,
            )
        services = get_services(request)
        key = await services.api_keys.verify(authorization[7:].strip())
        if key is None:
            raise Problem(401, "unauthorized", "Invalid or revoked API key", headers=_UNAUTHORIZED)
        if not key.allows(self.scope):
            raise Problem(
                403,
                "forbidden",
                "Missing scope",
                f"this route needs {self.scope}",
                {"required_scope": self.scope},
            )
        return key


IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        description="Unique per request (e.g. a UUID); retries reuse it. Records expire "
        "after 24 h.",
        max_length=257,
        pattern=r'^"?[\x21\x23-\x5b\x5d-\x7e]{1,255}"?$',
    ),
]

Services_ = Annotated[Services, Depends(get_services)]


async def idempotent(
    request: Request,
    key: ApiKey,
    raw_key: str,
    canonical_body: bytes,
    work: Callable[[], Awaitable[Response]],
    *,
    redact: Callable[[bytes], bytes] | None = None,
) -> Response:
    """Run ``work`` under the Idempotency-Key protocol (see :mod:`onhand.api.idempotency`).

    ``work`` returns the response; engine errors it raises are answered as problems and
    stored like any answer, except retryable 503s, which release the key. ``redact``
    rewrites a successful body before it is stored (secrets are never kept).
    """
    return await run_idempotent(
        get_services(request),
        key.client_id,
        request.method,
        request.url.path,
        raw_key,
        canonical_body,
        work,
        redact=redact,
    )


async def run_idempotent(
    services: Services,
    client_id: str,
    method: str,
    path: str,
    raw_key: str,
    canonical_body: bytes,
    work: Callable[[], Awaitable[Response]],
    *,
    redact: Callable[[bytes], bytes] | None = None,
) -> Response:
    """:func:`idempotent` without a Request (the reservation route calls this)."""
    idem_key = parse_key(raw_key)
    fp = fingerprint(method, path, canonical_body)
    ticket = await services.idempotency.begin(client_id, idem_key, fp)
    if isinstance(ticket, Stored):
        return replayed(ticket)
    return await answer_under(services, ticket, path, work, redact=redact)


def replayed(stored: Stored) -> Response:
    """A stored answer, sent again (``Idempotent-Replayed: true``)."""
    headers = dict(stored.headers)
    headers["Idempotent-Replayed"] = "true"
    return Response(stored.body, stored.status, headers, media_type=stored.media_type)


async def answer_under(
    services: Services,
    ticket: Ticket,
    path: str,
    work: Callable[[], Awaitable[Response]],
    *,
    redact: Callable[[bytes], bytes] | None = None,
) -> Response:
    """Run ``work`` for the request that holds ``ticket`` (its key's pending record) and
    store its answer there — or, for a 503 or an exception, give the record up."""
    try:
        try:
            response = await work()
        except Problem as problem:
            response = problem_response(problem, None, path=path)
        except OnhandError as exc:
            response = problem_response(from_engine_error(exc), None, path=path)
    except BaseException:
        await services.idempotency.abandon(ticket)
        raise
    if response.status_code == 503:
        await services.idempotency.abandon(ticket)
        return response
    headers = {  # (raw header names are lower case)
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in response.raw_headers
        if k in _STORED_HEADERS
    }
    body = bytes(response.body)
    if redact is not None and response.status_code < 300:
        body = redact(body)
    answer = Stored(response.status_code, body, response.media_type or "", headers)
    try:
        await services.idempotency.finish(ticket, answer)
    except EngineUnavailable as exc:
        # The answer stands; a retry finds the key pending until lock_ms, then reruns.
        log.warning("idempotency record of %s not stored: %s", path, exc)
    return response
