"""RFC 9457 problem details: every error the HTTP API answers is one of these.

Bodies are ``application/problem+json`` with ``type`` (a stable URN,
``urn:onhand:problem:<slug>``, listed in docs/api.md), ``title``, ``status``,
``detail``, ``instance`` (the request path) and extension members where the client can
act on them (``shortfalls`` for insufficient stock, ``errors`` for invalid input,
``status`` of a reservation that cannot move). Engine errors are translated here, at
the boundary, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from onhand import errors

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_SCHEMA",
    "Problem",
    "documented",
    "from_engine_error",
    "problem_response",
    "problem_type",
]

PROBLEM_JSON = "application/problem+json"
_PREFIX = "urn:onhand:problem:"


def problem_type(slug: str) -> str:
    return _PREFIX + slug


_DESCRIPTIONS = {
    400: "Missing or malformed Idempotency-Key, or malformed JSON",
    401: "No valid API key",
    403: "The key lacks the route's scope",
    404: "Not found",
    409: "Conflict (see the problem type), or a request with this key in flight",
    412: "If-Match does not match the record version",
    413: "Request body too large",
    422: "Invalid input",
    428: "If-Match required",
    429: "Anti-hoarding limit reached (see Retry-After)",
    503: "Redis or Postgres not ready or unreachable; retry",
}


# The body every error answer has (RFC 9457); extension members vary by problem type.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "urn:onhand:problem:<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "the request path"},
    },
    "additionalProperties": True,
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def documented(*statuses: int, **specific: str) -> dict[int | str, dict[str, Any]]:
    """The problem answers a route documents in OpenAPI: ``statuses`` with the common
    descriptions, or a route's own one given as ``s404="…"``; each with its
    ``application/problem+json`` body, and ``Retry-After`` where the API sends it."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        answer: dict[str, Any] = {
            "description": specific.get(f"s{s}", _DESCRIPTIONS[s]),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
        if s in (409, 429, 503):
            answer["headers"] = _RETRY_AFTER
        out[s] = answer
    return out


@dataclass
class Problem(Exception):
    """An HTTP error answered as problem+json. Raise it from a handler or a dependency."""

    status: int
    slug: str
    title: str
    detail: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, instance: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": problem_type(self.slug),
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            out["detail"] = self.detail
        out["instance"] = instance
        out.update(self.extensions)
        return out


def problem_response(problem: Problem, request: Request | None, *, path: str = "") -> Response:
    instance = request.url.path if request is not None else path
    return Response(
        orjson.dumps(problem.body(instance)),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers or None,
    )


def _retry(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def from_engine_error(exc: errors.OnhandError) -> Problem:
    """Translate an engine error into the problem the API answers (see docs/api.md)."""
    if isinstance(exc, errors.InsufficientStock):
        shortfalls = [
            {"sku": s.sku, "requested": s.requested, "available": s.available}
            for s in exc.shortfalls
        ]
        return Problem(
            409, "insufficient-stock", "Insufficient stock", str(exc), {"shortfalls": shortfalls}
        )
    if isinstance(exc, errors.LineLimitExceeded):
        return Problem(
            422,
            "line-limit-exceeded",
            "Line quantity above the SKU's limit",
            str(exc),
            {"sku": exc.sku, "requested": exc.requested, "limit": exc.limit},
        )
    if isinstance(exc, errors.InvalidInput):
        return Problem(
            422,
            "invalid-input",
            "Invalid input",
            str(exc),
            {"errors": [{"field": exc.field, "message": str(exc)}]},
        )
    if isinstance(exc, errors.StockLimitExceeded):
        return Problem(422, "stock-limit-exceeded", "Stock counter limit exceeded", str(exc))
    if isinstance(exc, errors.NotEnoughOnHand):
        return Problem(
            409,
            "not-enough-on-hand",
            "Not enough stock on hand to ship",
            str(exc),
            {"sku": exc.sku, "warehouse": exc.warehouse},
        )
    if isinstance(exc, errors.ReservationNotFound):
        return Problem(404, "not-found", "Not found", "no such reservation")
    if isinstance(exc, errors.InvalidTransition):
        slug = "reservation-expired" if exc.status == "expired" else "invalid-transition"
        return Problem(
            409,
            slug,
            "Reservation cannot make this transition",
            str(exc),
            {"reservation_status": exc.status},
        )
    if isinstance(exc, errors.IdempotencyConflict):
        return Problem(422, "order-id-reused", "Order id reused with a different payload", str(exc))
    if isinstance(exc, errors.VersionConflict):
        return Problem(
            412,
            "precondition-failed",
            "Record version does not match",
            str(exc),
            {"expected_version": exc.expected, "current_version": exc.actual},
            {"ETag": f'"{exc.actual}"'},
        )
    if isinstance(exc, errors.EngineNotReady):
        return Problem(503, "not-ready", "Stock engine not ready", str(exc), headers=_retry(1))
    if isinstance(exc, errors.EngineUnavailable):
        return Problem(503, "unavailable", "Stock engine unavailable", str(exc), headers=_retry(1))
    if isinstance(exc, errors.EngineFault):
        return Problem(500, "engine-fault", "Stock engine fault", str(exc))
    return Problem(500, "internal", "Internal error", type(exc).__name__)
