"""The API against its own OpenAPI document, with schemathesis generating the requests.

Schemathesis reads ``/openapi.json`` from the running app (the ``api`` fixture: real
Redis, real Postgres, lifespan running) and generates requests for every operation,
valid ones and invalid ones; each is sent in-process through httpx's ASGI transport
with an admin key, and its response checked: no 5xx, a documented status code, the
documented content type and headers, and a body matching the documented schema.

Hypothesis runs in a worker thread (it is synchronous); each request is handed to the
event loop that runs the app, so the app, its pools and its background task stay on
the loop they were opened on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.checks
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.schemas import APIOperation

from onhand.settings import Settings
from tests.api.support import Api, idem, open_api, stock, stop_observer_task, warehouse

Operation = APIOperation[Any, Any, Any, Any]
EXAMPLES_PER_OPERATION = 25
BASE_URL = "http://onhand"
CONFORMANCE = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]
CHECKS = [schemathesis.checks.not_a_server_error, *CONFORMANCE]


async def load_schema(api: Api) -> Any:
    async with api.http() as anon:
        r = await anon.get("/openapi.json")
    assert r.status_code == 200, r.text
    return schemathesis.openapi.from_dict(r.json())


def operations(schema: Any) -> list[Operation]:
    out: list[Operation] = []
    for result in schema.get_all_operations():
        out.append(result.ok())
    return out


def transport_kwargs(case: Case[Any], token: str, mode: GenerationMode) -> dict[str, Any]:
    """The request schemathesis would send, as httpx keyword arguments.

    Positive cases get a fresh valid Idempotency-Key: the header's schema is a bare
    string, and most generated ones are refused (400) before any work is done."""
    kw = case.as_transport_kwargs(base_url=BASE_URL)
    headers = {**kw.get("headers", {}), "Authorization": f"Bearer {token}"}
    if mode is GenerationMode.POSITIVE and "Idempotency-Key" in headers:
        headers.update(idem())
    out: dict[str, Any] = {
        "method": kw["method"],
        "url": kw["url"],
        "headers": headers,
        "params": kw.get("params") or None,
        "cookies": kw.get("cookies") or None,
    }
    if "json" in kw:
        out["json"] = kw["json"]
    elif "data" in kw:
        data = kw["data"]
        out["content" if isinstance(data, bytes | str) else "data"] = data
    elif "content" in kw:
        out["content"] = kw["content"]
    return out


class Failures:
    """What the run found, one line per (operation, kind), with an example each."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], str] = {}
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.unsatisfiable: list[str] = []

    def add(self, operation: str, kind: str, example: str) -> None:
        self.found.setdefault((operation, kind), example)

    def report(self) -> str:
        return "\n\n".join(f"{op} -- {kind}\n{ex}" for (op, kind), ex in sorted(self.found.items()))


def run_operation(
    operation: Operation,
    mode: GenerationMode,
    send: Callable[[dict[str, Any]], httpx.Response],
    token: str,
    failures: Failures,
    path_parameters: dict[str, str] | None = None,
) -> None:
    """Hypothesis over one operation, in this (worker) thread; failures are collected,
    not raised, so that one bad operation does not hide the others. ``path_parameters``
    fixes those (to things that exist); the rest is generated."""
    label = f"{operation.label} [{mode.value}{', known ids' if path_parameters else ''}]"

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, path_parameters=path_parameters))
    def check(case: Case[Any]) -> None:
        kw = transport_kwargs(case, token, mode)
        response = send(kw)
        failures.requests += 1
        if operation.path == "/readyz" and response.status_code == 503:
            # Its documented "not ready" (no writer drains this app's streams): not a
            # server error, so it is checked against the schema but not counted as 5xx.
            case.validate_response(response, checks=CONFORMANCE)
            return
        failures.statuses[response.status_code] = failures.statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            body = kw.get("json", kw.get("content", kw.get("data")))
            example = (
                f"  request: {kw['method']} {kw['url']} params={kw['params']} "
                f"idempotency-key={kw['headers'].get('Idempotency-Key')!r} body={body!r:.300}\n"
                f"  response: {response.status_code} "
                f"{response.headers.get('content-type')} {response.text[:300]}\n"
                f"  {str(exc).strip().splitlines()[0]}"
            )
            for failure in exc.exceptions:
                failures.add(label, failure.title, example)

    try:
        check()
    except Unsatisfiable:
        # Nothing to make invalid (no parameters, no body): only positive cases exist.
        failures.unsatisfiable.append(label)


async def seed(api: Api) -> tuple[str, dict[str, str]]:
    """Two warehouses, some stock, a pending hold, and an admin key: the key and the ids
    that exist are returned."""
    admin = await api.client()
    await warehouse(admin, "w1", latitude=48.1, longitude=11.6)
    await warehouse(admin, "w2", latitude=52.5, longitude=13.4, priority=50)
    for sku in ("0", "A", "sku-1"):
        await stock(admin, sku, "w1", 100)
        await stock(admin, sku, "w2", 100)
    r = await admin.post(
        "/v1/reservations",
        json={"order_id": "o1", "lines": [{"sku": "A", "qty": 1}]},
        headers=idem(),
    )
    assert r.status_code == 201, r.text
    known = {"reservation_id": r.json()["reservation_id"], "sku": "A", "warehouse": "w1"}
    known["warehouse_id"] = "w1"
    # Not key_id: revoking the run's own key would end the run.
    return await api.token("admin"), known


async def test_every_operation_answers_as_documented_for_generated_requests(api: Api) -> None:
    started = time.monotonic()
    token, known = await seed(api)
    schema = await load_schema(api)
    ops = operations(schema)
    assert len(ops) >= 25, [op.label for op in ops]
    loop = asyncio.get_running_loop()
    client = api.http()

    def send(kw: dict[str, Any]) -> httpx.Response:
        future = asyncio.run_coroutine_threadsafe(client.request(**kw), loop)
        return future.result(timeout=30)

    def run_all() -> Failures:
        failures = Failures()
        for operation in ops:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run_operation(operation, mode, send, token, failures)
            names = {p.name for p in operation.path_parameters}
            if names and names <= set(known):
                fixed = {name: known[name] for name in names}
                run_operation(operation, GenerationMode.POSITIVE, send, token, failures, fixed)
        return failures

    async with client:
        failures = await asyncio.to_thread(run_all)
    elapsed = time.monotonic() - started
    assert failures.requests >= len(ops) * 2 * 5, failures.statuses
    # Generated requests got through to real work, not only to refusals.
    assert {200, 201, 207, 404, 409, 422} <= set(failures.statuses), failures.statuses
    assert not any(s >= 500 for s in failures.statuses), failures.report()
    assert not any("[positive" in u for u in failures.unsatisfiable), failures.unsatisfiable
    assert failures.found == {}, (
        f"{len(failures.found)} non-conformances in {failures.requests} requests "
        f"({elapsed:.0f} s):\n\n{failures.report()}"
    )


# -- answers that generation does not reach ------------------------------------------------
def documented(spec: dict[str, Any], method: str, path: str) -> set[int]:
    responses = spec["paths"][path][method.lower()]["responses"]
    return {int(code) for code in responses}


async def test_a_replayed_order_answers_with_a_documented_status(api: Api) -> None:
    """The same order again under a new Idempotency-Key is the engine's replay: the
    existing hold comes back with 200, which POST /v1/reservations must document."""
    async with api.http() as anon:
        spec = (await anon.get("/openapi.json")).json()
    admin = await api.client()
    await warehouse(admin, "w1")
    await stock(admin, "sku-1", "w1", 10)
    body = {"order_id": "o1", "lines": [{"sku": "sku-1", "qty": 1}]}
    first = await admin.post("/v1/reservations", json=body, headers=idem())
    assert first.status_code == 201, first.text
    again = await admin.post("/v1/reservations", json=body, headers=idem())
    assert again.status_code in (200, 201), again.text
    assert again.json()["reservation_id"] == first.json()["reservation_id"]
    assert again.status_code in documented(spec, "POST", "/v1/reservations"), (
        f"POST /v1/reservations answers {again.status_code} to a replayed order; "
        f"documented: {sorted(documented(spec, 'POST', '/v1/reservations'))}"
    )


async def test_a_body_above_the_limit_is_a_documented_413_on_every_operation_with_a_body(
    api: Api,
) -> None:
    async with api.http() as anon:
        spec = (await anon.get("/openapi.json")).json()
    admin = await api.client()
    limit = api.settings.max_body_bytes
    undocumented: list[str] = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if "requestBody" not in op:
                continue
            url = path.replace("{reservation_id}", "c0.o1").replace("{key_id}", "0" * 16)
            url = (
                url.replace("{warehouse_id}", "w1")
                .replace("{sku}", "s")
                .replace("{warehouse}", "w1")
            )
            r = await admin.request(
                method.upper(),
                url,
                content=b"{}" + b" " * limit,
                headers={"Content-Type": "application/json", **idem()},
            )
            assert r.status_code == 413, (method, path, r.status_code, r.text)
            if 413 not in documented(spec, method, path):
                undocumented.append(f"{method.upper()} {path}")
    assert undocumented == [], f"413 is answered but not documented on: {undocumented}"


# -- stopping the app ---------------------------------------------------------------------
async def test_the_app_stops_within_seconds_even_when_stopped_while_its_observer_samples(
    api_settings: Settings,
) -> None:
    """The lifespan cancels its observer task once and waits for it. A cancellation that
    lands while the observer's Redis command is being sent is swallowed (redis-py sends
    under ``asyncio.wait_for``, which on Python 3.11 loses a cancellation that races the
    inner send completing), the observer loops on, and the shutdown waits forever."""
    rng = random.Random(7)
    for attempt in range(40):
        ctx = open_api(api_settings)
        await ctx.__aenter__()
        # The observer samples at once, then every second; stop somewhere in a sample.
        await asyncio.sleep(rng.uniform(0.0, 0.03))
        exiting = asyncio.ensure_future(ctx.__aexit__(None, None, None))
        done, _ = await asyncio.wait({exiting}, timeout=5)
        if not done:
            await stop_observer_task()
            await exiting
            pytest.fail(f"the app's lifespan did not stop within 5 s (attempt {attempt + 1})")
        exiting.result()
