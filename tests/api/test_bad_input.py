"""Bad input over HTTP: every refusal is an RFC 9457 problem, and nothing changes.

Quantities that are not integers in range, ids outside ``[A-Za-z0-9._-]{1,64}`` (in a
body or in the path), malformed JSON, unknown fields, a wrong Content-Type and bodies
above the size limit (declared or streamed): each answers 4xx problem+json, and the
stock (availability, every partition's event stream, the warehouse catalog) is
exactly what it was. Each endpoint's request is valid but for the one bad
value: the same request with a good value succeeds at the end of each test.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.api.support import Api, assert_problem, idem, order, stock, warehouse

SKU, WH, WH2 = "sku-1", "w1", "w2"
MAX_BODY = 262_144
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def admin(api: Api) -> httpx.AsyncClient:
    """A client with every scope, in a world of two warehouses, stock and one hold."""
    client = await api.client()
    await warehouse(client, WH)
    await warehouse(client, WH2)
    await stock(client, SKU, WH, 10)
    await stock(client, SKU, WH2, 10)
    r = await client.post("/v1/reservations", json=order("held", (SKU, 2)), headers=idem())
    assert r.status_code == 201, r.text
    return client


async def snapshot(api: Api, client: httpx.AsyncClient) -> dict[str, Any]:
    """What a bad request must not change: the SKU's availability (minus its clock), the
    length of every partition's event stream (every stock or reservation change appends
    an event) and the warehouse catalog."""
    r = await client.get(f"/v1/skus/{SKU}/availability")
    assert r.status_code == 200, r.text
    availability = {k: v for k, v in r.json().items() if k != "at_ms"}
    engine = api.services.engine
    streams = engine.keys.all_streams()
    async with engine.client.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
        pipe.hgetall(engine.keys.warehouse_catalog())
        pipe.get(engine.keys.catalog_version())
        *lengths, catalog, version = await pipe.execute()
    return {
        "availability": availability,
        "streams": dict(zip(streams, lengths, strict=True)),
        "catalog": (catalog, version),
    }


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


# -- the four stock-moving endpoints --------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    path: str
    body: Callable[[Any], dict[str, Any]]
    """The request body with ``value`` as its quantity."""
    ids: tuple[str, ...]
    """Where the body carries ids, as dotted paths."""


ENDPOINTS = {
    "reservations": Endpoint(
        "/v1/reservations",
        lambda v: {
            "order_id": "o-new",
            "lines": [{"sku": SKU, "qty": v}],
            "allocation": {"mode": "fixed", "warehouse": WH},
        },
        ("order_id", "lines.0.sku", "allocation.warehouse"),
    ),
    "stock-receipts": Endpoint(
        "/v1/stock-receipts",
        lambda v: {"sku": SKU, "warehouse": WH, "qty": v},
        ("sku", "warehouse"),
    ),
    "adjustments": Endpoint(
        "/v1/adjustments",
        lambda v: {"sku": SKU, "warehouse": WH, "delta": v, "reason": "found"},
        ("sku", "warehouse"),
    ),
    "transfers": Endpoint(
        "/v1/transfers",
        lambda v: {"sku": SKU, "source": WH, "destination": WH2, "qty": v},
        ("sku", "source", "destination"),
    ),
}
endpoints = pytest.mark.parametrize("name", sorted(ENDPOINTS))

BAD_QTYS: list[Any] = [
    0,
    -1,
    1.5,
    1.0,
    "5",
    True,
    False,
    math.nan,
    math.inf,
    2**53,
    10**30,
    -(10**30),
    None,
    [1],
    {"n": 1},
]
BAD_DELTAS: list[Any] = [q for q in BAD_QTYS if q != -1] + [-1.5, -(2**53), "-1"]
BAD_IDS: list[Any] = ["a:b", "a{b", "a}b", "a b", "x" * 10_240, "", "é", "a\nb", 5, None]
PATH_IDS: list[str] = ["a:b", "a{b", "a}b", "a b", "x y", "x" * 10_240, "é", "a%b"]


Send = Callable[[], Awaitable[httpx.Response]]
Case = tuple[str, Send]


def raw(body: Any) -> bytes:
    """JSON text as Python writes it: NaN and Infinity stay bare words."""
    return json.dumps(body).encode()


def with_value(body: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    *parents, last = dotted.split(".")
    node: Any = out
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value
    assert isinstance(out, dict)
    return out


async def post_raw(client: httpx.AsyncClient, path: str, content: bytes) -> httpx.Response:
    return await client.post(path, content=content, headers={**JSON, **idem()})


async def refused_and_unchanged(
    api: Api,
    client: httpx.AsyncClient,
    cases: Sequence[Case],
    statuses: tuple[int, ...] = (422,),
) -> None:
    """Run every case; each must answer a problem with one of ``statuses`` and leave
    :func:`snapshot` as it was. All failures are reported together."""
    before = await snapshot(api, client)
    failures: list[str] = []
    for label, send in cases:
        r = await send()
        try:
            assert r.status_code in statuses, f"status {r.status_code}, not in {statuses}"
            assert_problem(r, r.status_code)
        except AssertionError as exc:
            failures.append(f"{label}: {exc} -- {r.text[:200]}")
        after = await snapshot(api, client)
        if after != before:
            failures.append(f"{label}: state changed ({r.status_code})")
            before = after
    assert failures == [], "\n".join(failures)


async def accepted(client: httpx.AsyncClient, name: str, body: dict[str, Any]) -> None:
    r = await client.post(ENDPOINTS[name].path, json=body, headers=idem())
    assert r.status_code == 201, f"the control request of {name} failed: {r.text}"


# -- quantities -----------------------------------------------------------------------------
@endpoints
async def test_a_bad_quantity_is_a_422_problem_and_changes_nothing(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    ep = ENDPOINTS[name]
    bad = BAD_DELTAS if name == "adjustments" else BAD_QTYS

    def case(v: Any) -> Case:
        return describe(v), lambda: post_raw(admin, ep.path, raw(ep.body(v)))

    # NaN and Infinity are not JSON: a 400 malformed-json is as good as a 422.
    await refused_and_unchanged(api, admin, [case(v) for v in bad], (400, 422))
    await accepted(admin, name, ep.body(1))


async def test_nan_is_refused_even_as_raw_text(api: Api, admin: httpx.AsyncClient) -> None:
    body = b'{"sku": "sku-1", "warehouse": "w1", "qty": NaN}'
    await refused_and_unchanged(
        api, admin, [("NaN", lambda: post_raw(admin, "/v1/stock-receipts", body))], (400, 422)
    )


async def test_the_largest_quantity_is_accepted_and_one_more_is_not(
    api: Api, admin: httpx.AsyncClient
) -> None:
    from onhand.domain import MAX_QTY

    body = {"sku": "sku-big", "warehouse": WH, "qty": MAX_QTY + 1}
    await refused_and_unchanged(
        api, admin, [("MAX_QTY + 1", lambda: post_raw(admin, "/v1/stock-receipts", raw(body)))]
    )
    await accepted(admin, "stock-receipts", {**body, "qty": MAX_QTY})


# -- ids ------------------------------------------------------------------------------------
@endpoints
async def test_a_bad_id_in_the_body_is_a_422_problem_and_changes_nothing(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    ep = ENDPOINTS[name]
    good = ep.body(1)

    def case(field: str, v: Any) -> Case:
        body = raw(with_value(good, field, v))
        return f"{field}={describe(v)}", lambda: post_raw(admin, ep.path, body)

    await refused_and_unchanged(api, admin, [case(f, v) for f in ep.ids for v in BAD_IDS])
    await accepted(admin, name, good)


def _path_cases(client: httpx.AsyncClient, bad: str) -> list[Case]:
    p = quote(bad, safe=":")
    calls: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/skus/{p}/availability", None),
        ("GET", f"/v1/reservations/{p}", None),
        ("POST", f"/v1/reservations/{p}:confirm", None),
        ("POST", f"/v1/reservations/{p}:release", None),
        ("POST", f"/v1/reservations/{p}:fulfill", None),
        ("POST", f"/v1/reservations/{p}:cancel", None),
        ("POST", f"/v1/reservations/{p}:extend", {"ttl_ms": 60_000}),
        ("GET", f"/v1/stock-levels/{p}/{WH}", None),
        ("GET", f"/v1/stock-levels/{SKU}/{p}", None),
        ("PUT", f"/v1/stock-levels/{p}/{WH}/safety-stock", {"qty": 1}),
        ("PUT", f"/v1/stock-levels/{SKU}/{p}/safety-stock", {"qty": 1}),
        ("GET", f"/v1/skus/{p}/policy", None),
        ("PUT", f"/v1/skus/{p}/policy", {}),
        ("GET", f"/v1/warehouses/{p}", None),
        ("PUT", f"/v1/warehouses/{p}", {}),
        ("GET", f"/v1/availability?sku={quote(bad, safe='')}", None),
        ("GET", f"/v1/movements?sku={quote(bad, safe='')}", None),
    ]

    def send(method: str, url: str, body: Any) -> Send:
        kw: dict[str, Any] = {} if body is None else {"json": body}
        return lambda: client.request(method, url, headers=idem(), **kw)

    return [(f"{m} {u[:60]}", send(m, u, b)) for m, u, b in calls]


@pytest.mark.parametrize("bad", PATH_IDS, ids=describe)
async def test_a_bad_id_in_the_path_is_a_404_or_422_problem_and_changes_nothing(
    api: Api, admin: httpx.AsyncClient, bad: str
) -> None:
    await refused_and_unchanged(api, admin, _path_cases(admin, bad), (404, 422))


async def test_the_reservation_id_with_a_space_is_refused_by_its_url(
    api: Api, admin: httpx.AsyncClient
) -> None:
    r = await admin.get("/v1/reservations/x%20y")
    assert r.status_code in (404, 422), r.text
    assert_problem(r, r.status_code)
    r = await admin.get("/v1/skus/a:b/availability")
    assert_problem(r, 422)


# -- malformed bodies -----------------------------------------------------------------------
@endpoints
async def test_malformed_json_is_a_400_malformed_json_problem(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    path = ENDPOINTS[name].path
    texts = [b'{"sku":', b"{", b"not json", b'{"sku": "a",}', b"\xff\xfe", b"[1, 2"]
    cases = [(describe(t), partial(post_raw, admin, path, t)) for t in texts]
    await refused_and_unchanged(api, admin, cases, (400,))
    r = await post_raw(admin, path, b'{"sku":')
    assert r.json()["type"] == "urn:onhand:problem:malformed-json"


@endpoints
async def test_an_unknown_field_or_a_missing_one_is_a_422_problem(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    ep = ENDPOINTS[name]
    good = ep.body(1)
    missing = next(iter(good))
    bodies = {
        "unknown field": {**good, "surprise": 1},
        f"missing {missing}": {k: v for k, v in good.items() if k != missing},
        "empty object": {},
        "an array": [good],
        "a string": "body",
        "null": None,
    }
    cases = [(label, partial(post_raw, admin, ep.path, raw(b))) for label, b in bodies.items()]
    await refused_and_unchanged(api, admin, cases)
    r = await post_raw(admin, ep.path, raw(bodies["unknown field"]))
    assert r.json()["type"] == "urn:onhand:problem:invalid-input"
    await accepted(admin, name, good)


@endpoints
async def test_a_body_that_is_not_declared_json_is_a_4xx_problem(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    ep = ENDPOINTS[name]
    body = raw(ep.body(1))

    def send(content_type: str | None) -> Send:
        headers = idem() | ({"Content-Type": content_type} if content_type else {})
        return lambda: admin.post(ep.path, content=body, headers=headers)

    types = ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
    cases = [(f"Content-Type {t}", send(t)) for t in types]
    await refused_and_unchanged(api, admin, cases, (400, 415, 422))
    await accepted(admin, name, ep.body(1))


# -- oversize bodies ------------------------------------------------------------------------
def padded(name: str, size: int) -> bytes:
    """A valid request body of ``size`` bytes (JSON with trailing whitespace)."""
    body = raw(ENDPOINTS[name].body(1))
    return body + b" " * (size - len(body))


async def chunks(data: bytes, size: int = 16_384) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@endpoints
async def test_a_body_above_the_limit_with_content_length_is_a_413_problem(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    ep = ENDPOINTS[name]
    big = padded(name, MAX_BODY + 1)
    cases = [
        ("declared", lambda: post_raw(admin, ep.path, big)),
        ("huge declared", lambda: post_raw(admin, ep.path, padded(name, 4 * MAX_BODY))),
    ]
    await refused_and_unchanged(api, admin, cases, (413,))
    r = await post_raw(admin, ep.path, big)
    assert r.json()["type"] == "urn:onhand:problem:body-too-large"
    # At the limit is fine.
    r = await post_raw(admin, ep.path, padded(name, MAX_BODY))
    assert r.status_code == 201, r.text


@endpoints
async def test_a_streamed_body_above_the_limit_without_content_length_is_a_413_problem(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    ep = ENDPOINTS[name]
    big = padded(name, MAX_BODY + 1)

    async def streamed() -> httpx.Response:
        request = admin.build_request(
            "POST", ep.path, content=chunks(big), headers={**JSON, **idem()}
        )
        assert "content-length" not in request.headers
        assert request.headers.get("transfer-encoding") == "chunked"
        return await admin.send(request)

    await refused_and_unchanged(api, admin, [("chunked", streamed)], (413,))
    # A streamed body within the limit is read in full and applied.
    request = admin.build_request(
        "POST", ep.path, content=chunks(padded(name, MAX_BODY)), headers={**JSON, **idem()}
    )
    r = await admin.send(request)
    assert r.status_code == 201, r.text


# -- every other integer field --------------------------------------------------------------
@dataclass(frozen=True)
class IntField:
    method: str
    path: str
    body: Callable[[Any], Any]
    """The request body with ``value`` in the field under test."""
    good: Any
    headers: tuple[tuple[str, str], ...] = ()
    valid: tuple[Any, ...] = ()
    """Values of :data:`BAD_QTYS` that this field accepts (compared by type and value)."""
    bad: tuple[Any, ...] | None = None
    """Its own list of bad values instead of :data:`BAD_QTYS`."""

    def bad_values(self) -> list[Any]:
        if self.bad is not None:
            return list(self.bad)
        taken = {(type(v), v) for v in self.valid}
        return [v for v in BAD_QTYS if isinstance(v, list | dict) or (type(v), v) not in taken]


POLICY_FIELDS = (
    "backorder_limit",
    "preorder_limit",
    "preorder_release_ms",
    "reorder_point",
    "reorder_qty",
    "lead_time_days",
    "max_line_qty",
)
INT_FIELDS: dict[str, IntField] = {
    "stock-counts.count": IntField(
        "POST",
        "/v1/stock-counts",
        lambda v: {"sku": SKU, "warehouse": WH, "count": v},
        3,
        (("If-Match", '"{version}"'),),
        valid=(0,),
    ),
    "stock-receipts:bulk.items.0.qty": IntField(
        "POST",
        "/v1/stock-receipts:bulk",
        lambda v: {"items": [{"sku": SKU, "warehouse": WH, "qty": v}]},
        1,
    ),
    "stock-counts:bulk.items.0.count": IntField(
        "POST",
        "/v1/stock-counts:bulk",
        lambda v: {"items": [{"sku": SKU, "warehouse": WH, "count": v, "expected_version": 0}]},
        3,
        valid=(0,),
    ),
    "stock-counts:bulk.items.0.expected_version": IntField(
        "POST",
        "/v1/stock-counts:bulk",
        lambda v: {"items": [{"sku": SKU, "warehouse": WH, "count": 3, "expected_version": v}]},
        "{version}",
        valid=(0,),
    ),
    "adjustments:bulk.items.0.delta": IntField(
        "POST",
        "/v1/adjustments:bulk",
        lambda v: {"items": [{"sku": SKU, "warehouse": WH, "delta": v, "reason": "correction"}]},
        1,
        bad=tuple(BAD_DELTAS),
    ),
    "reservations.ttl_ms": IntField(
        "POST",
        "/v1/reservations",
        lambda v: {"order_id": "o-ttl", "lines": [{"sku": SKU, "qty": 1}], "ttl_ms": v},
        60_000,
        valid=(None,),
    ),
    ":extend.ttl_ms": IntField(
        "POST", "/v1/reservations/{rid}:extend", lambda v: {"ttl_ms": v}, 120_000
    ),
    "safety-stock.qty": IntField(
        "PUT", f"/v1/stock-levels/{SKU}/{WH}/safety-stock", lambda v: {"qty": v}, 1, valid=(0,)
    ),
    **{
        f"policy.{name}": IntField(
            "PUT",
            f"/v1/skus/{SKU}/policy",
            partial(dict.fromkeys, [name]),
            1,
            valid=(0, None) if name != "max_line_qty" else (None,),
        )
        for name in POLICY_FIELDS
    },
}


@pytest.mark.parametrize("name", sorted(INT_FIELDS))
async def test_every_other_integer_field_refuses_non_integers_and_changes_nothing(
    api: Api, admin: httpx.AsyncClient, name: str
) -> None:
    spec = INT_FIELDS[name]
    hold = await admin.post("/v1/reservations", json=order("ext", (SKU, 1)), headers=idem())
    assert hold.status_code == 201, hold.text
    level = await admin.get(f"/v1/stock-levels/{SKU}/{WH}")
    values = {"rid": hold.json()["reservation_id"], "version": level.json()["version"]}
    path = spec.path.format(**values)
    headers = {k: v.format(**values) for k, v in spec.headers}
    bad = spec.bad_values()

    def case(v: Any) -> Case:
        content = raw(spec.body(v))
        return describe(v), lambda: admin.request(
            spec.method, path, content=content, headers={**JSON, **idem(), **headers}
        )

    await refused_and_unchanged(api, admin, [case(v) for v in bad], (400, 422))
    good = int(spec.good.format(**values)) if isinstance(spec.good, str) else spec.good
    ok = await admin.request(spec.method, path, json=spec.body(good), headers={**idem(), **headers})
    assert ok.status_code < 300, f"the control request of {name} failed: {ok.text}"
