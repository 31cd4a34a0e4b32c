"""The Idempotency-Key protocol over HTTP, on a reservation and on a stock receipt.

A reservation is idempotent in the engine too (its id comes from the order id); a
receipt is not — there the key is all that stands between a retry and a double receipt.
Every case checks what the stock did, not only what the API said. The last test checks
that a replayable answer does not keep a new API key's secret (docs/api.md: shown once).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from pydantic import BaseModel

from onhand.api.idempotency import Ticket, fingerprint
from onhand.api.schemas import ReceiptIn, ReservationCreate
from onhand.ledger.fencing import verify_and_reopen
from tests.api.support import Api, idem, order, stock, warehouse
from tests.api.test_auth import SCOPED, SKU, WH, WH2, call_for

REPLAYED = "Idempotent-Replayed"


@dataclass(frozen=True)
class Case:
    path: str
    model: type[BaseModel]
    body: dict[str, Any]
    other: dict[str, Any]

    def canonical(self) -> bytes:
        return self.model.model_validate_json(orjson.dumps(self.body)).model_dump_json().encode()


RESERVE = Case("/v1/reservations", ReservationCreate, order("o1", ("A", 2)), order("o1", ("A", 3)))
RECEIVE = Case(
    "/v1/stock-receipts",
    ReceiptIn,
    {"sku": "A", "warehouse": "W1", "qty": 2},
    {"sku": "A", "warehouse": "W1", "qty": 3},
)
cases = pytest.mark.parametrize("case", [RESERVE, RECEIVE], ids=["reservation", "receipt"])


async def ready(api: Api, client_id: str | None = None) -> httpx.AsyncClient:
    """A client of every scope (as ``client_id`` if given), with 10 of A at W1."""
    c = await api.client(client_id=client_id) if client_id else await api.client()
    if not api.services.catalog.all():
        await warehouse(c, "W1")
        await stock(c, "A", "W1", 10)
    return c


async def held_and_on_hand(c: httpx.AsyncClient) -> tuple[int, int]:
    r = await c.get("/v1/stock-levels/A/W1")
    assert r.status_code == 200, r.text
    return r.json()["held"], r.json()["on_hand"]


def problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:onhand:problem:{slug}", body
    return body


def after_one(case: Case, before: tuple[int, int]) -> tuple[int, int]:
    """Held and on_hand after exactly one application of ``case.body``."""
    held, on_hand = before
    return (held + 2, on_hand) if case is RESERVE else (held, on_hand + 2)


@cases
async def test_a_replay_gets_the_stored_answer_byte_for_byte_and_applies_nothing_again(
    api: Api, case: Case
):
    c = await ready(api)
    before = await held_and_on_hand(c)
    key = idem()
    first = await c.post(case.path, json=case.body, headers=key)
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    for _ in range(2):
        again = await c.post(case.path, json=case.body, headers=key)
        assert (again.status_code, again.content) == (201, first.content)
        assert again.headers[REPLAYED] == "true"
        assert again.headers["content-type"] == first.headers["content-type"]
        for header in ("etag", "location"):
            assert again.headers.get(header) == first.headers.get(header)
    assert await held_and_on_hand(c) == after_one(case, before)


@cases
async def test_the_same_key_with_another_body_is_refused_and_changes_nothing(api: Api, case: Case):
    c = await ready(api)
    key = idem()
    assert (await c.post(case.path, json=case.body, headers=key)).status_code == 201
    before = await held_and_on_hand(c)
    r = await c.post(case.path, json=case.other, headers=key)
    problem(r, 422, "idempotency-key-reused")
    assert REPLAYED not in r.headers
    assert await held_and_on_hand(c) == before


@cases
async def test_a_key_whose_first_request_is_still_running_answers_409_until_it_ends(
    api: Api, case: Case
):
    c = await ready(api, client_id="inflight")
    before = await held_and_on_hand(c)
    key = "k-in-flight"
    fp = fingerprint("POST", case.path, case.canonical())
    ticket = await api.services.idempotency.begin("inflight", key, fp)
    assert isinstance(ticket, Ticket)
    r = await c.post(case.path, json=case.body, headers={"Idempotency-Key": key})
    problem(r, 409, "idempotency-request-in-flight")
    assert r.headers["retry-after"] == "1"
    problem(
        await c.post(case.path, json=case.other, headers={"Idempotency-Key": key}),
        422,
        "idempotency-key-reused",
    )
    assert await held_and_on_hand(c) == before
    await api.services.idempotency.abandon(ticket)
    r = await c.post(case.path, json=case.body, headers={"Idempotency-Key": key})
    assert r.status_code == 201 and REPLAYED not in r.headers, r.text
    assert await held_and_on_hand(c) == after_one(case, before)


@cases
async def test_two_concurrent_requests_with_one_key_apply_once(api: Api, case: Case):
    c = await ready(api)
    before = await held_and_on_hand(c)
    key = idem()
    one, two = await asyncio.gather(
        c.post(case.path, json=case.body, headers=key),
        c.post(case.path, json=case.body, headers=key),
    )
    outcomes = sorted((r.status_code, r.headers.get(REPLAYED, "")) for r in (one, two))
    assert outcomes in ([(201, ""), (201, "true")], [(201, ""), (409, "")]), outcomes
    assert await held_and_on_hand(c) == after_one(case, before)


@cases
async def test_a_request_without_a_key_is_a_400_problem(api: Api, case: Case):
    c = await ready(api)
    before = await held_and_on_hand(c)
    problem(await c.post(case.path, json=case.body), 400, "idempotency-key-missing")
    assert await held_and_on_hand(c) == before


MALFORMED = [b"", b"   ", b"x" * 256, b"x" * 300, b'a"b', b"a\\b", "café".encode()]


@cases
async def test_malformed_keys_are_refused_with_400_and_a_255_character_key_works(
    api: Api, case: Case
):
    c = await ready(api)
    before = await held_and_on_hand(c)
    for raw in MALFORMED:
        r = await c.post(case.path, json=case.body, headers={b"Idempotency-Key": raw})
        assert r.status_code == 400, (raw, r.text)
        problem(r, 400, "idempotency-key-malformed")
    assert await held_and_on_hand(c) == before
    r = await c.post(case.path, json=case.body, headers={"Idempotency-Key": "k" * 255})
    assert r.status_code == 201, r.text


@cases
async def test_a_quoted_structured_field_key_is_the_same_key_as_its_bare_form(api: Api, case: Case):
    c = await ready(api)
    before = await held_and_on_hand(c)
    bare = await c.post(case.path, json=case.body, headers={"Idempotency-Key": "abc"})
    assert bare.status_code == 201, bare.text
    quoted = await c.post(case.path, json=case.body, headers={"Idempotency-Key": '"abc"'})
    assert (quoted.status_code, quoted.content) == (201, bare.content)
    assert quoted.headers[REPLAYED] == "true"
    assert await held_and_on_hand(c) == after_one(case, before)


@cases
async def test_two_clients_using_the_same_key_do_not_meet(api: Api, case: Case):
    alice, bob = await ready(api, "alice"), await ready(api, "bob")
    before = await held_and_on_hand(alice)
    key = {"Idempotency-Key": "shared"}
    a = await alice.post(case.path, json=case.body, headers=key)
    b = await bob.post(case.path, json=case.body, headers=key)
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert REPLAYED not in a.headers and REPLAYED not in b.headers
    once = after_one(case, before)
    twice = after_one(case, once)
    assert await held_and_on_hand(alice) == twice
    if case is RESERVE:
        assert a.json()["reservation_id"] == "alice.o1"
        assert b.json()["reservation_id"] == "bob.o1"


@cases
async def test_a_503_from_a_fenced_engine_is_not_stored_so_the_retry_runs(api: Api, case: Case):
    c = await ready(api)
    before = await held_and_on_hand(c)
    key = idem()
    await api.services.engine.fence()
    r = await c.post(case.path, json=case.body, headers=key)
    problem(r, 503, "not-ready")
    assert r.headers["retry-after"] == "1"
    await verify_and_reopen(api.services.engine, api.services.store)
    assert await held_and_on_hand(c) == before
    r = await c.post(case.path, json=case.body, headers=key)
    assert r.status_code == 201 and REPLAYED not in r.headers, r.text
    assert await held_and_on_hand(c) == after_one(case, before)


async def test_an_insufficient_stock_answer_is_stored_and_replayed_after_stock_arrives(api: Api):
    c = await ready(api)
    key = idem()
    short = await c.post("/v1/reservations", json=order("big", ("A", 15)), headers=key)
    problem(short, 409, "insufficient-stock")
    await stock(c, "A", "W1", 10)
    again = await c.post("/v1/reservations", json=order("big", ("A", 15)), headers=key)
    assert (again.status_code, again.content) == (409, short.content)
    assert again.headers[REPLAYED] == "true"
    assert await held_and_on_hand(c) == (0, 20)
    fresh = await c.post("/v1/reservations", json=order("big", ("A", 15)), headers=idem())
    assert fresh.status_code == 201, fresh.text


async def test_the_same_order_under_another_key_gets_the_same_reservation_back(api: Api):
    c = await ready(api)
    first = await c.post("/v1/reservations", json=RESERVE.body, headers=idem())
    assert first.status_code == 201, first.text
    again = await c.post("/v1/reservations", json=RESERVE.body, headers=idem())
    assert again.status_code == 200 and REPLAYED not in again.headers, again.text
    for field in ("reservation_id", "status", "created_ms", "deadline_ms", "allocations"):
        assert again.json()[field] == first.json()[field]
    assert await held_and_on_hand(c) == (2, 10)


async def test_the_same_order_with_other_lines_is_refused_as_an_order_id_reuse(api: Api):
    c = await ready(api)
    first = await c.post("/v1/reservations", json=RESERVE.body, headers=idem())
    assert first.status_code == 201, first.text
    problem(
        await c.post("/v1/reservations", json=RESERVE.other, headers=idem()), 422, "order-id-reused"
    )
    assert await held_and_on_hand(c) == (2, 10)
    got = await c.get(f"/v1/reservations/{first.json()['reservation_id']}")
    assert got.json()["allocations"] == first.json()["allocations"]


async def test_a_new_api_key_secret_is_shown_once_and_not_kept_in_the_idempotency_record(
    api: Api,
):
    """docs/api.md: keys are "shown **once**: Postgres stores only the SHA-256 of the
    secret". The Idempotency-Key record must not keep the whole key for 24 h."""
    c = await ready(api)
    key, body = idem(), {"client_id": "shop", "scopes": ["availability:read"]}
    made = await c.post("/v1/api-keys", json=body, headers=key)
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    engine = api.services.engine
    stored = [
        await engine.client.get(k)
        async for k in engine.client.scan_iter(match=f"{engine.keys.namespace}:idem:*")
    ]
    texts = [v.decode() if isinstance(v, bytes) else str(v) for v in stored]
    assert texts and not [t for t in texts if token in t], "the whole API key is in Redis"
    again = await c.post("/v1/api-keys", json=body, headers=key)
    assert token not in again.text


# -- every POST route ---------------------------------------------------------------------
POSTS = [r for r in SCOPED if r.method == "POST"]


@pytest.mark.parametrize("route", POSTS, ids=lambda r: r.label)
async def test_every_post_route_requires_a_key_and_replays_the_first_answer(api: Api, route: Any):
    c = await api.client()  # every scope: the key is the only thing that can refuse
    await warehouse(c, WH)
    await warehouse(c, WH2)
    await stock(c, SKU, WH, 5)
    call = call_for(route)
    before = await api.services.engine.state()

    bare = await c.request(call.method, call.url, json=call.json, headers=call.headers)
    problem(bare, 400, "idempotency-key-missing")
    assert await api.services.engine.state() == before

    headers = {**idem(), **call.headers}
    first = await c.request(call.method, call.url, json=call.json, headers=headers)
    assert first.status_code < 500, first.text
    assert REPLAYED not in first.headers
    after_first = await api.services.engine.state()
    again = await c.request(call.method, call.url, json=call.json, headers=headers)
    assert (again.status_code, again.headers.get(REPLAYED)) == (first.status_code, "true")
    assert await api.services.engine.state() == after_first


async def test_a_bulk_call_on_a_fenced_engine_is_503_and_not_stored(api: Api):
    c = await ready(api)
    before = await held_and_on_hand(c)
    key = idem()
    body = {"items": [{"sku": "A", "warehouse": "W1", "qty": 2}]}
    await api.services.engine.fence()
    r = await c.post("/v1/stock-receipts:bulk", json=body, headers=key)
    problem(r, 503, "not-ready")
    await verify_and_reopen(api.services.engine, api.services.store)
    assert await held_and_on_hand(c) == before
    r = await c.post("/v1/stock-receipts:bulk", json=body, headers=key)
    assert r.status_code == 207 and REPLAYED not in r.headers, r.text
    assert r.json()["results"][0]["status"] == 201
    assert await held_and_on_hand(c) == (before[0], before[1] + 2)
