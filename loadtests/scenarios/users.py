"""The four kinds of onhand clients, as locust FastHttpUsers (imports locust: gevent).

Every request is judged by what onhand promises, not only by its status code: an
``insufficient-stock`` 409 during a flash sale is a correct answer (success), a 5xx
never is. Promises that span requests (a replay returns the same reservation, an
abandoned hold is expired by the reaper, a read never shows a SKU promised beyond its
stock) are reported as ``CHECK`` entries in locust's statistics: one success per check
passed, one failure per violation, so they show up in the CSV/HTML reports.

``OUTCOMES`` counts what happened (held, sold out, abandoned, expired, replayed, …) for
the run summary the locustfile writes.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent  # type: ignore[import-untyped]
from locust import FastHttpUser, between, task
from locust.exception import StopUser

from loadtests.scenarios.catalog import Catalog, Zipf

__all__ = [
    "OUTCOMES",
    "CheckoutWithAbandonment",
    "FlashSaleBuyer",
    "ProductPageReader",
    "RetryingClient",
    "install_catalog",
]

OUTCOMES: Counter[str] = Counter()
EXPIRY_GRACE_S = 1.5
"""An abandoned hold must read as expired this long after its deadline (the reaper
runs every 100 ms by default; the rest is slack for a loaded machine)."""

_ANY = None
Expect = dict[int, frozenset[str] | None]
"""Acceptable answers: status -> allowed problem types (None: any body)."""
RESERVED: Expect = {201: _ANY, 200: _ANY, 409: frozenset({"insufficient-stock"})}
CONFIRMED: Expect = {
    200: _ANY,
    409: frozenset({"reservation-expired", "invalid-transition"}),
}
RELEASED: Expect = {200: _ANY, 409: frozenset({"invalid-transition", "reservation-expired"})}
READ: Expect = {200: _ANY, 304: _ANY}


class _Run:
    """The run's catalog (set once by the locustfile's test_start listener)."""

    catalog: Catalog | None = None
    popular: Zipf | None = None


RUN = _Run()


def install_catalog(catalog: Catalog) -> None:
    RUN.catalog = catalog
    RUN.popular = Zipf(catalog.skus)


@dataclass
class Answer:
    status: int
    body: Any
    problem: str
    replayed: bool

    @property
    def held(self) -> bool:
        return self.status in (200, 201) and isinstance(self.body, dict)

    @property
    def rid(self) -> str:
        return str(self.body["reservation_id"]) if self.held else ""


class OnhandUser(FastHttpUser):
    """Plumbing shared by the scenarios: the scenario's key, judged requests, checks."""

    abstract = True
    scenario: ClassVar[str] = ""

    def on_start(self) -> None:
        if RUN.catalog is None or RUN.popular is None:
            raise StopUser()  # setup failed; the locustfile has already stopped the run
        self.catalog: Catalog = RUN.catalog
        self.popular: Zipf = RUN.popular
        self.rng = random.Random()
        self.auth = {"Authorization": f"Bearer {self.catalog.tokens[self.scenario]}"}

    # -- requests ------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        name: str,
        expect: Expect,
        body: object = None,
        idem: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; success iff its status (and problem type) is in ``expect``."""
        hdrs = dict(self.auth)
        if idem is not None:
            hdrs["Idempotency-Key"] = idem
        if headers:
            hdrs.update(headers)
        with self.client.request(
            method, path, name=name, json=body, headers=hdrs, catch_response=True
        ) as resp:
            status = resp.status_code
            data: Any = None
            if resp.content:
                try:
                    data = resp.json()
                except ValueError:
                    data = None
            problem = ""
            if status >= 400 and isinstance(data, dict):
                problem = str(data.get("type", "")).rsplit(":", 1)[-1]
            resp_headers = resp.headers or {}
            replayed = resp_headers.get("Idempotent-Replayed") == "true"
            allowed = expect.get(status, frozenset())
            if status in expect and (allowed is None or problem in allowed):
                resp.success()
            elif status == 0:
                resp.failure(f"no answer: {getattr(resp, 'error', None)!r}")
            else:
                resp.failure(f"{status} {problem or (resp.text or '')[:200]}")
        return Answer(status, data, problem, replayed)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record a cross-request promise as a CHECK entry (failure: ``detail``)."""
        self.environment.events.request.fire(
            request_type="CHECK",
            name=name,
            response_time=0,
            response_length=0,
            exception=None if ok else AssertionError(detail or name),
            context={},
        )
        return ok

    def new_order(self) -> str:
        return uuid.uuid4().hex[:24]

    def reserve(self, body: dict[str, object], idem: str | None = None) -> Answer:
        ans = self.call(
            "POST",
            "/v1/reservations",
            name="/v1/reservations",
            expect=RESERVED,
            body=body,
            idem=idem or str(uuid.uuid4()),
        )
        if ans.held:
            OUTCOMES[f"{self.scenario}.held"] += 1
        elif ans.problem == "insufficient-stock":
            OUTCOMES[f"{self.scenario}.insufficient"] += 1
        return ans

    def transition(self, rid: str, action: str, idem: str | None = None) -> Answer:
        expect = CONFIRMED if action == "confirm" else RELEASED
        ans = self.call(
            "POST",
            f"/v1/reservations/{rid}:{action}",
            name=f"/v1/reservations/[id]:{action}",
            expect=expect,
            idem=idem or str(uuid.uuid4()),
        )
        outcome = "ok" if ans.status == 200 else (ans.problem or str(ans.status))
        OUTCOMES[f"{self.scenario}.{action}.{outcome}"] += 1
        return ans

    def think(self, low: float, high: float) -> None:
        gevent.sleep(self.rng.uniform(low, high))

    def availability(self, sku: str) -> Answer:
        ans = self.call(
            "GET", f"/v1/skus/{sku}/availability", name="/v1/skus/[sku]/availability", expect=READ
        )
        if ans.status == 200 and isinstance(ans.body, dict):
            self.check_not_oversold([ans.body])
        return ans

    def check_not_oversold(self, items: list[dict[str, Any]]) -> None:
        """Per warehouse, held + committed must stay within on_hand (our SKUs have no
        backorder or pre-order allowance)."""
        for item in items:
            for wh in item.get("warehouses", []):
                promised = wh["held"] + wh["committed"]
                if promised > wh["on_hand"]:
                    self.check(
                        "availability shows no oversell",
                        False,
                        f"{item['sku']}@{wh['warehouse']}: held {wh['held']} + committed "
                        f"{wh['committed']} > on_hand {wh['on_hand']}",
                    )
                    return


# -- (a) flash sale ---------------------------------------------------------------------
class FlashSaleBuyer(OnhandUser):
    """A few hot SKUs, stock far below demand: reserve 1-2 units, confirm most (85 %),
    release the rest; a sold-out answer sends the buyer back to the product page."""

    scenario = "flash"
    weight = 2
    wait_time = between(0.05, 0.5)

    @task
    def buy(self) -> None:
        sku = self.rng.choice(self.catalog.flash_skus)
        body: dict[str, object] = {
            "order_id": self.new_order(),
            "ttl_ms": 15_000,
            "lines": [
                {"sku": sku, "qty": self.rng.randint(1, 2), "allow_split": self.rng.random() < 0.5}
            ],
        }
        ans = self.reserve(body)
        if not ans.held:
            if ans.problem == "insufficient-stock":
                self.availability(sku)
            return
        self.think(0.1, 0.6)
        self.transition(ans.rid, "confirm" if self.rng.random() < 0.85 else "release")


# -- (b) product pages ------------------------------------------------------------------
class ProductPageReader(OnhandUser):
    """≈90 % availability reads over Zipf-distributed SKUs (one SKU, with If-None-Match
    when the page was seen before, or a listing of 20-100), ≈10 % add-to-cart (hold one
    unit, then confirm or release)."""

    scenario = "reader"
    weight = 8
    wait_time = between(0.02, 0.2)

    def on_start(self) -> None:
        super().on_start()
        self.etags: dict[str, str] = {}

    @task(6)
    def product_page(self) -> None:
        sku = self.popular.pick(self.rng)
        etag = self.etags.get(sku) if self.rng.random() < 0.5 else None
        headers = {"If-None-Match": etag} if etag else None
        with self.client.request(
            "GET",
            f"/v1/skus/{sku}/availability",
            name="/v1/skus/[sku]/availability",
            headers={**self.auth, **(headers or {})},
            catch_response=True,
        ) as resp:
            if resp.status_code == 304:
                resp.success()
                OUTCOMES["reader.not_modified"] += 1
                return
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code} {(resp.text or '')[:200]}")
                return
            resp.success()
            new_tag = (resp.headers or {}).get("ETag")
            body = resp.json()
        if new_tag:
            self.etags[sku] = new_tag
        self.check_not_oversold([body])

    @task(3)
    def listing(self) -> None:
        skus = self.popular.pick_distinct(self.rng, self.rng.randint(20, 100))
        if self.rng.random() < 0.3:  # the listing shows the flash-sale items too
            skus += [s for s in self.catalog.flash_skus if s not in skus]
        query = "&".join(f"sku={s}" for s in skus)
        ans = self.call(
            "GET", f"/v1/availability?{query}", name="/v1/availability?sku=[20-100]", expect=READ
        )
        if ans.status == 200 and isinstance(ans.body, dict):
            items = ans.body.get("items", [])
            self.check("bulk availability answers every SKU", len(items) == len(skus))
            self.check_not_oversold(items)

    @task(1)
    def add_to_cart(self) -> None:
        body: dict[str, object] = {
            "order_id": self.new_order(),
            "ttl_ms": 10_000,
            "lines": [{"sku": self.popular.pick(self.rng), "qty": 1}],
        }
        ans = self.reserve(body)
        if ans.held:
            self.think(0.05, 0.3)
            self.transition(ans.rid, "confirm" if self.rng.random() < 0.5 else "release")


# -- (c) checkout with abandonment ------------------------------------------------------
class CheckoutWithAbandonment(OnhandUser):
    """1-3 lines, a short hold (2-5 s); ≈30 % walk away (neither confirm nor release),
    so the reaper must expire them during the run; the rest confirm (sometimes after an
    extension) or release. Every abandoned hold is read back once its deadline plus
    ``EXPIRY_GRACE_S`` has passed: it must be ``expired``; some get a late confirm,
    which must be refused."""

    scenario = "checkout"
    weight = 2
    wait_time = between(0.1, 0.8)

    def on_start(self) -> None:
        super().on_start()
        self.abandoned: list[tuple[str, float]] = []

    def _allocation(self) -> dict[str, object] | None:
        roll = self.rng.random()
        if roll < 0.5:
            return None  # the default: priority
        w = self.rng.choice(self.catalog.warehouses)
        if roll < 0.8:
            return {
                "mode": "nearest",
                "latitude": w.latitude + self.rng.uniform(-1, 1),
                "longitude": w.longitude + self.rng.uniform(-1, 1),
            }
        return {"mode": "fixed", "warehouse": w.warehouse_id}

    @task
    def checkout(self) -> None:
        self.verify_abandoned()
        skus = self.popular.pick_distinct(self.rng, self.rng.choice((1, 1, 2, 3)))
        ttl_ms = self.rng.randint(2_000, 5_000)
        body: dict[str, object] = {
            "order_id": self.new_order(),
            "ttl_ms": ttl_ms,
            "lines": [
                {"sku": s, "qty": self.rng.randint(1, 3), "allow_split": self.rng.random() < 0.3}
                for s in skus
            ],
        }
        allocation = self._allocation()
        if allocation is not None:
            body["allocation"] = allocation
        ans = self.reserve(body)
        if not ans.held:
            return
        due = time.monotonic() + ttl_ms / 1000
        self.think(0.1, 0.8)
        roll = self.rng.random()
        if roll < 0.30:
            self.abandoned.append((ans.rid, due))
            OUTCOMES["checkout.abandoned"] += 1
        elif roll < 0.75:
            if self.rng.random() < 0.1:
                self.call(
                    "POST",
                    f"/v1/reservations/{ans.rid}:extend",
                    name="/v1/reservations/[id]:extend",
                    # a hold of 2-5 s can expire before a slow answer's extend arrives,
                    # as it can before its confirm (CONFIRMED accepts that too)
                    expect={
                        200: _ANY,
                        409: frozenset({"invalid-transition", "reservation-expired"}),
                    },
                    body={"ttl_ms": 5_000},
                    idem=str(uuid.uuid4()),
                )
            self.transition(ans.rid, "confirm")
        else:
            self.transition(ans.rid, "release")

    def verify_abandoned(self) -> None:
        now = time.monotonic()
        due = [(rid, t) for rid, t in self.abandoned if t + EXPIRY_GRACE_S <= now]
        if not due:
            return
        self.abandoned = [(rid, t) for rid, t in self.abandoned if t + EXPIRY_GRACE_S > now]
        for rid, t in due[:3]:
            ans = self.call(
                "GET", f"/v1/reservations/{rid}", name="/v1/reservations/[id]", expect={200: _ANY}
            )
            if ans.status != 200:
                continue
            status = ans.body.get("status")
            late = now - t
            if self.check(
                "abandoned hold expired by the reaper",
                status == "expired",
                f"{rid} is {status} {late:.1f} s after its deadline",
            ):
                OUTCOMES["checkout.abandoned_expired"] += 1
            if self.rng.random() < 0.2:
                late_confirm = self.call(
                    "POST",
                    f"/v1/reservations/{rid}:confirm",
                    name="/v1/reservations/[id]:confirm (late)",
                    expect={409: frozenset({"reservation-expired", "invalid-transition"})},
                    idem=str(uuid.uuid4()),
                )
                OUTCOMES[f"checkout.late_confirm.{late_confirm.status}"] += 1


# -- (d) retrying client ----------------------------------------------------------------
class RetryingClient(OnhandUser):
    """Sends every reserve twice with the same Idempotency-Key (a quarter of the time the
    first two go out concurrently, then a third follows): every answer that ran or was
    replayed names the same reservation, replays say ``Idempotent-Replayed: true``;
    a concurrent duplicate may get 409 ``idempotency-request-in-flight``. Sometimes the
    order is re-sent under a new key (the engine's own idempotency: the same hold)."""

    scenario = "retry"
    weight = 1
    wait_time = between(0.1, 0.8)

    def _post(self, body: dict[str, object], key: str, concurrent: bool = False) -> Answer:
        expect = dict(RESERVED)
        if concurrent:
            expect[409] = frozenset({"insufficient-stock", "idempotency-request-in-flight"})
        return self.call(
            "POST",
            "/v1/reservations",
            name="/v1/reservations (retry)" if concurrent else "/v1/reservations",
            expect=expect,
            body=body,
            idem=key,
        )

    @task
    def reserve_with_retries(self) -> None:
        body: dict[str, object] = {
            "order_id": self.new_order(),
            "ttl_ms": 30_000,
            "lines": [{"sku": self.popular.pick(self.rng), "qty": self.rng.randint(1, 2)}],
        }
        key = str(uuid.uuid4())
        if self.rng.random() < 0.25:
            pair = [gevent.spawn(self._post, body, key, True) for _ in range(2)]
            gevent.joinall(pair)
            answers = [g.value for g in pair if isinstance(g.value, Answer)]
            answers.append(self._post(body, key))
            OUTCOMES["retry.concurrent"] += 1
        else:
            answers = [self._post(body, key), self._post(body, key)]
        first = self._judge(answers)
        if first is None or not first.held:
            return
        if self.rng.random() < 0.15:  # the same order under a new key: the same hold
            again = self._post(body, str(uuid.uuid4()))
            self.check(
                "same order, new key: same reservation",
                again.status == 200 and again.rid == first.rid and not again.replayed,
                f"{again.status} {again.rid or again.problem} vs {first.rid}",
            )
        action = "confirm" if self.rng.random() < 0.7 else "release"
        ckey = str(uuid.uuid4())
        done = self.transition(first.rid, action, ckey)
        replay = self.transition(first.rid, action, ckey)
        if done.status == 503:  # not stored ("nothing is known to have happened"): runs again
            self.check(
                f"{action} retried after a 503 runs again",
                not replay.replayed and replay.status in (200, 409),
                f"{replay.status} replayed={replay.replayed}",
            )
            return
        if done.status == 0:  # no answer: it may have run (then replayed) or not (runs now)
            self.check(
                f"{action} retried after no answer runs or replays",
                replay.status in (200, 409),
                f"{replay.status} replayed={replay.replayed}",
            )
            return
        self.check(
            f"{action} replay is the stored answer",
            replay.replayed and replay.status == done.status and replay.body == done.body,
            f"{replay.status} replayed={replay.replayed} vs {done.status}",
        )

    def _judge(self, answers: list[Answer]) -> Answer | None:
        """The answer that ran; checks that every other one is its replay (or in flight).

        A 503 is not stored (its retry runs again) and a request without an answer (a
        connection closed under it) may or may not have run: neither counts, and each is a
        failed request in the statistics already."""
        settled = [
            a
            for a in answers
            if a.problem != "idempotency-request-in-flight" and a.status not in (0, 503)
        ]
        if not settled:
            return None  # no answer settled anything: counted as failed requests already
        ran = [a for a in settled if not a.replayed]
        OUTCOMES["retry.in_flight"] += sum(
            a.problem == "idempotency-request-in-flight" for a in answers
        )
        if not self.check(
            "one Idempotency-Key, one execution",
            len(ran) == 1,
            f"{len(ran)} of {len(answers)} answers ran: "
            f"{[(a.status, 'replayed' if a.replayed else a.problem) for a in answers]}",
        ):
            return None
        first = ran[0]
        for replay in settled:
            if replay is first:
                continue
            same = replay.status == first.status and replay.rid == first.rid
            if self.check(
                "replay returns the same reservation",
                same,
                f"replay {replay.status} {replay.rid} vs {first.status} {first.rid}",
            ):
                OUTCOMES["retry.replayed_same"] += 1
        return first
