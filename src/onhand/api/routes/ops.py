"""Operations: liveness, readiness and Prometheus metrics (no API key: probe targets).

``/livez`` checks nothing outside the process, so a Redis blip never restarts API
pods. ``/readyz`` answers 503 unless Redis answers and every partition is open (not
fenced), Postgres answers, and the writer's lag (sampled every second) is under
``ready_max_lag_ms``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from onhand.api.services import get_services, json_response

router = APIRouter(tags=["operations"])
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


@router.get("/livez", summary="Liveness: the process serves requests (no dependencies)")
async def livez() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: Redis open, Postgres reachable, writer lag in bounds",
    responses={503: {"description": "Not ready (body says which check failed)"}},
)
async def readyz(request: Request) -> Response:
    services = get_services(request)
    checks: dict[str, Any] = {}
    try:
        readiness = await asyncio.wait_for(services.engine.readiness(), 1.0)
        fenced = [p for p, marker in readiness.items() if marker is None]
        checks["redis"] = "ok" if not fenced else f"fenced partitions: {fenced[:8]}"
    except Exception as exc:  # any failure means not ready; the body says which
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(services.store.pool.fetchval("SELECT 1"), 1.0)
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    lag_ms = request.app.state.writer_lag_ms
    limit = services.settings.ready_max_lag_ms
    checks["writer_lag"] = "ok" if lag_ms is not None and lag_ms <= limit else f"{lag_ms} ms"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks, "writer_lag_ms": lag_ms}
    return json_response(body, 200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry = get_services(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
