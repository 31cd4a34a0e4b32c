"""Availability for product pages: one SKU or up to 500, from Redis only.

``ETag`` is a hash of the answer without its clock reading, so ``If-None-Match``
answers 304 while nothing a page shows has changed.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from onhand.api.apikeys import ApiKey
from onhand.api.metrics import ApiMetrics
from onhand.api.problems import Problem, documented
from onhand.api.schemas import ID, MAX_BULK, Availability, AvailabilityList
from onhand.api.services import RequireScope, get_services
from onhand.domain import SkuAvailability

router = APIRouter(prefix="/v1", tags=["availability"])
Reader = Annotated[ApiKey, Depends(RequireScope("availability:read"))]
_PROBLEMS = documented(401, 403, 422, 503, s422="Invalid SKU id or too many SKUs")


def _stable(a: SkuAvailability, metrics: ApiMetrics | None) -> dict[str, object]:
    """The answer for one SKU without its clock reading (``at_ms``): what the ETag hashes.

    Counts an oversell when its records show promises that the SKU's recorded exposure
    does not account for (:attr:`SkuAvailability.unaccounted`). ``expected_restock_ms``
    is given only when it is known: the pre-order release date while pre-orders are
    open. A lead time alone is no date (and a moving estimate would change the ETag on
    every read).
    """
    policy = a.policy
    at_ms = a.at_ms
    available = on_hand = held = committed = exposure = 0
    low_stock = False
    warehouses = []
    for lvl in a.levels:  # one pass: the totals are sums over the same levels
        free = max(0, lvl.on_hand - lvl.held - lvl.committed - lvl.safety_stock)
        available += free
        on_hand += lvl.on_hand
        held += lvl.held
        committed += lvl.committed
        low_stock = low_stock or lvl.low
        exposure += max(0, lvl.held + lvl.committed - max(0, lvl.on_hand - lvl.safety_stock))
        warehouses.append(
            {
                "warehouse": lvl.warehouse,
                "available": free,
                "on_hand": lvl.on_hand,
                "held": lvl.held,
                "committed": lvl.committed,
                "safety_stock": lvl.safety_stock,
                "low_stock": lvl.low,
                "version": lvl.version,
            }
        )
    unaccounted = exposure - a.beyond  # SkuAvailability.unaccounted, from the same pass
    if metrics is not None and unaccounted > 0:
        metrics.oversell.inc(unaccounted)
    restock: int | None = None
    if policy.preorder_limit > 0 and at_ms < policy.preorder_release_ms:
        restock = policy.preorder_release_ms
    return {
        "sku": a.sku,
        "available": available,
        "on_hand": on_hand,
        "held": held,
        "committed": committed,
        "backorder_remaining": a.backorder_remaining(),
        "preorder_remaining": a.preorder_remaining(),
        "low_stock": low_stock,
        "expected_restock_ms": restock,
        "warehouses": warehouses,
    }


def render(a: SkuAvailability, metrics: ApiMetrics | None = None) -> dict[str, object]:
    """The JSON body for ``a`` (see :func:`_stable`), with its clock reading."""
    body = _stable(a, metrics)
    body["at_ms"] = a.at_ms
    return body


def rendered(
    found: list[SkuAvailability], metrics: ApiMetrics | None = None, memo: RenderMemo | None = None
) -> tuple[bytes, str]:
    """``(json, etag)``: the JSON array of :func:`render` of each, and :func:`etag_of`
    those bodies, built from each SKU's JSON without its clock reading (:func:`_stable`):
    a body is that text with ``,"at_ms":N`` before its closing brace, and the ETag hashes
    the array of those texts. ``memo`` (optional) keeps each SKU's text between calls."""
    stable = [_stable_json(a, metrics) if memo is None else memo.stable(a, metrics) for a in found]
    bodies = [t[:-1] + b',"at_ms":%d}' % a.at_ms for t, a in zip(stable, found, strict=True)]
    data = b"[" + b",".join(bodies) + b"]"
    return data, _etag(b"[" + b",".join(stable) + b"]")


def _stable_json(a: SkuAvailability, metrics: ApiMetrics | None) -> bytes:
    return orjson.dumps(_stable(a, metrics))


class RenderMemo:
    """Each SKU's last :func:`_stable` JSON text, reused while what it was made from is
    the same: the same ``levels`` and ``policy`` objects (immutable; the engine hands out
    the same ones while a SKU is unchanged), the same exposure and pre-order phase. The
    oversell count of a reused text is counted again, as a fresh render would.

    Holds at most ``max_skus`` entries (cleared when full). Not thread-safe: one per
    event loop."""

    def __init__(self, max_skus: int = 16_384) -> None:
        self.max_skus = max_skus
        self._memo: dict[str, tuple[object, object, int, bool, int, bytes]] = {}

    def stable(self, a: SkuAvailability, metrics: ApiMetrics | None) -> bytes:
        policy = a.policy
        preorder = policy.preorder_limit > 0 and a.at_ms < policy.preorder_release_ms
        seen = self._memo.get(a.sku)
        if (
            seen is not None
            and seen[0] is a.levels
            and seen[1] is policy
            and seen[2] == a.beyond
            and seen[3] == preorder
        ):
            if metrics is not None and seen[4] > 0:
                metrics.oversell.inc(seen[4])
            return seen[5]
        text = _stable_json(a, metrics)
        if len(self._memo) >= self.max_skus:
            self._memo.clear()
        self._memo[a.sku] = (a.levels, policy, a.beyond, preorder, a.unaccounted, text)
        return text


def _etag(stable_json: bytes) -> str:
    return 'W/"' + hashlib.blake2b(stable_json, digest_size=12).hexdigest() + '"'


def etag_of(bodies: list[dict[str, object]]) -> str:
    """A weak ETag of rendered bodies: a hash of their JSON without ``at_ms``."""
    return _etag(orjson.dumps([{k: v for k, v in b.items() if k != "at_ms"} for b in bodies]))


def answer(body: bytes, etag: str, if_none_match: str | None) -> Response:
    """200 with the JSON ``body``, or 304 when ``If-None-Match`` names ``etag``."""
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, 200, headers, media_type="application/json")


def single_body(bodies_json: bytes) -> bytes:
    """The one body of a one-element JSON array from :func:`rendered`."""
    return bodies_json[1:-1]


def bulk_body(bodies_json: bytes) -> bytes:
    """``{"items": [...]}`` around a JSON array from :func:`rendered`."""
    return b'{"items":' + bodies_json + b"}"


def _answer(request: Request, body: bytes, etag: str) -> Response:
    return answer(body, etag, request.headers.get("if-none-match"))


@router.get(
    "/skus/{sku}/availability",
    response_model=Availability,
    responses={304: {"description": "Not modified (If-None-Match)"}, **_PROBLEMS},
    summary="Availability of one SKU, total and per warehouse",
)
async def sku_availability(
    sku: Annotated[str, Path(pattern=ID, max_length=64)], request: Request, key: Reader
) -> Response:
    services = get_services(request)
    bodies, etag = rendered([await services.engine.availability(sku)], services.metrics)
    return _answer(request, single_body(bodies), etag)


@router.get(
    "/availability",
    response_model=AvailabilityList,
    responses={304: {"description": "Not modified (If-None-Match)"}, **_PROBLEMS},
    summary="Availability of up to 500 SKUs in one call",
)
async def bulk_availability(
    request: Request,
    key: Reader,
    sku: Annotated[
        list[Annotated[str, Query(pattern=ID, max_length=64)]],
        Query(min_length=1, max_length=MAX_BULK, description="Repeat: ?sku=A&sku=B"),
    ],
) -> Response:
    if len(set(sku)) != len(sku):
        raise Problem(
            422,
            "invalid-input",
            "Invalid input",
            "a SKU is listed twice",
            {"errors": [{"field": "sku", "message": "duplicate"}]},
        )
    services = get_services(request)
    items, etag = rendered(await services.engine.availability_many(sku), services.metrics)
    return _answer(request, bulk_body(items), etag)
