"""The HTTP API's composition root: ``create_app(settings)``.

Nothing is created at import. The lifespan opens Redis and Postgres, builds
:class:`~onhand.api.services.Services`, publishes the warehouse catalog to Redis if
Redis lacks it, starts the observer task, and closes everything on shutdown. Every
error leaves as RFC 9457 problem+json; request bodies above ``max_body_bytes`` are
refused with 413 before they are read in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onhand import __version__
from onhand.api.apikeys import KeyStore
from onhand.api.bodies import read_body, replaying
from onhand.api.fastpath import AvailabilityFastPath, ReservationFastPath
from onhand.api.idempotency import Idempotency
from onhand.api.metrics import ApiMetrics
from onhand.api.observer import observe
from onhand.api.problems import Problem, from_engine_error, problem_response
from onhand.api.routes import admin, availability, catalog, ledger, ops, reservations, stock
from onhand.api.services import Services
from onhand.catalog import WarehouseCatalog
from onhand.engine.redis import connect
from onhand.errors import OnhandError
from onhand.ledger.barrier import DurableConfirms
from onhand.ledger.migrate import asyncpg_dsn
from onhand.ledger.store import LedgerStore
from onhand.runtime import engine_for
from onhand.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """Hold stock for orders at checkout speed; read availability; receive,
adjust, count and transfer stock; browse the ledger. Authenticate with
`Authorization: Bearer <api key>`. Every POST takes an `Idempotency-Key` (records kept
24 h). Errors are RFC 9457 `application/problem+json`."""


GC_GEN0_THRESHOLD = 20_000
"""Container allocations between two collections of the youngest generation in a
server process (CPython's default is 700). Each collection walks every young object
still alive — under load, the state of every request in flight — so at 700 the
collector ran every few requests and took ≈ 7 % of a worker's busy time; garbage
cycles now wait at most this many allocations (a few MB) longer."""


class BodyLimit:
    """Pure ASGI middleware: 413 problem for bodies above ``limit`` bytes, before the
    application reads them: a declared ``Content-Length`` is checked at once, a streamed
    body is read (at most ``limit`` bytes) and then handed on."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await self._reject(scope, receive, send)
                    return
                declared = True
        if declared or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # the server holds it to its length
            return
        # A streamed (chunked) body: read it up to the limit before the app sees it.
        read = await read_body(receive, self.limit)
        if read is None:
            return  # the client went away
        body, _ = read
        if len(body) > self.limit:
            await self._reject(scope, receive, send)
            return
        await self.app(scope, replaying(receive, body), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = Problem(
            413, "body-too-large", "Request body too large", f"at most {self.limit} bytes"
        )
        await problem_response(problem, None, path=scope["path"])(scope, receive, send)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it has stopped: a cancellation that lands inside redis-py's
    ``asyncio.wait_for`` can be swallowed on Python 3.11, so one cancel is not enough."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


def _validation_problem(exc: RequestValidationError) -> Problem:
    errors = list(exc.errors())
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if loc[:1] == ("header",) and str(loc[-1]).lower() == "idempotency-key":
            if e.get("type") == "missing":
                return Problem(
                    400,
                    "idempotency-key-missing",
                    "Idempotency-Key header required",
                    "every POST needs an Idempotency-Key (e.g. a UUID)",
                )
            return Problem(
                400,
                "idempotency-key-malformed",
                "Malformed Idempotency-Key",
                "1..255 printable ASCII characters",
            )
        if e.get("type") == "json_invalid":
            return Problem(400, "malformed-json", "Malformed JSON", "the body is not valid JSON")
    detail = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
        for e in errors[:50]
    ]
    return Problem(
        422,
        "invalid-input",
        "Invalid input",
        "; ".join(f"{d['field']}: {d['message']}" for d in detail[:5]),
        {"errors": detail},
    )


def _install_errors(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc, request)

    async def on_engine(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OnhandError)
        return problem_response(from_engine_error(exc), request)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(_validation_problem(exc), request)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        problem = Problem(exc.status_code, slug, str(exc.detail), headers=dict(exc.headers or {}))
        return problem_response(problem, request)

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(Problem(500, "internal", "Internal error"), request)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(OnhandError, on_engine)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)


async def open_services(settings: Settings) -> Services:
    client = connect(settings.require_redis_url(), max_connections=256)
    engine = engine_for(settings, client, coalesce=True)
    try:
        store = await LedgerStore.open(
            asyncpg_dsn(settings.require_database_url()), min_size=1, max_size=8
        )
    except BaseException:
        await client.aclose()
        raise
    services = Services(
        settings=settings,
        engine=engine,
        store=store,
        confirms=DurableConfirms(engine, store, timeout_ms=settings.confirm_barrier_timeout_ms),
        api_keys=KeyStore(store.pool, cache_ttl_s=settings.key_cache_ttl_ms / 1000),
        idempotency=Idempotency(
            engine, ttl_ms=settings.idempotency_ttl_ms, lock_ms=settings.idempotency_lock_ms
        ),
        catalog=WarehouseCatalog(client, engine.keys, store.pool),
        metrics=ApiMetrics(),
    )
    return services


async def close_services(services: Services) -> None:
    await services.confirms.close()  # before the pool it writes through goes
    await services.store.close()
    await services.engine.client.aclose()


def _docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle wheel: no CDN."""
    swagger_ui_path = importlib.import_module("swagger_ui_bundle").swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="onhand API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )


class OnhandApp(FastAPI):
    """FastAPI with the two fast paths in front of Starlette's middleware stack.

    ``POST /v1/reservations`` goes to :class:`~onhand.api.fastpath.ReservationFastPath`
    first; everything else (and every request the fast path declines) takes the
    regular way through the middleware, the router and the documented route.
    """

    fast_path: ReservationFastPath | None = None
    read_path: AvailabilityFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        if fast is not None and fast.matches(scope):
            scope["app"] = self
            await fast(scope, receive, send)
            return
        read = self.read_path
        if read is not None and read.matches(scope):
            scope["app"] = self
            await read(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def route_slowly(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, *, services: Services | None = None, freeze_gc: bool = False
) -> FastAPI:
    """Build the API. ``services`` (tests) replaces what the lifespan would open;
    ``freeze_gc`` (servers, not tests) freezes the startup heap for the collector and
    makes its youngest generation :data:`GC_GEN0_THRESHOLD` allocations long."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        svc = await open_services(settings) if services is None else services
        app.state.services = svc
        app.state.writer_lag_ms = None
        try:
            await svc.catalog.refresh(force=True)
            if not svc.catalog.all():
                await svc.catalog.publish_all()
        except Exception:
            if own:
                await close_services(svc)
            raise
        task = asyncio.create_task(observe(svc, app.state))
        if freeze_gc:
            # A server process: what exists now lives as long as the process; keep it
            # out of the cyclic collector's generations (shorter collections later).
            gc.collect()
            gc.freeze()
            _, gen1, gen2 = gc.get_threshold()
            gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
        try:
            yield
        finally:
            await _stop(task)
            if own:
                await close_services(svc)

    app = OnhandApp(
        title="onhand",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _install_errors(app)
    # Probes first: they are matched on every scrape and must not walk every route.
    for module in (ops, reservations, availability, stock, catalog, ledger, admin):
        app.include_router(module.router)
    _docs(app)
    app.add_middleware(RequestMetrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.fast_path = ReservationFastPath(app.route_slowly, settings.max_body_bytes, app.state)
    app.read_path = AvailabilityFastPath(app.route_slowly, app.state)
    return app


class RequestMetrics:
    """Pure ASGI middleware: request count and latency by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            services = getattr(scope["app"].state, "services", None)
            if services is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                services.metrics.route(route, scope["method"]).done(
                    status, time.perf_counter() - started
                )
