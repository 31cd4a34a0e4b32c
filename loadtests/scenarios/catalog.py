"""The catalog one load run works on, created over the HTTP API with an admin key.

Everything a run creates is named after its run id (``ONHAND_LOAD_RUN``, else random):

* warehouses ``LT<run>-W1..3`` (priorities 0..2, so they come first in ``priority``
  allocation, before any other warehouse of the catalog);
* catalog SKUs ``LT<run>-S0000..`` with stock in two warehouses each; their order is
  their popularity rank (readers and shoppers pick them Zipf-distributed);
* flash-sale SKUs ``LT<run>-HOT1..`` with stock far below demand;
* one API key per scenario, client ``<fs|pp|ck|rt><run>``, scopes
  ``reservations:write`` + ``availability:read``, ``max_active_holds`` high.

Setup is idempotent per run id: every POST carries an Idempotency-Key derived from the
run id and the step (uuid5), so processes that set up the same run (locust workers, a
``test_start`` fired twice) get the stored answers back, the API key tokens included.
This module does not import locust.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field

import httpx

__all__ = [
    "SCENARIOS",
    "Catalog",
    "Plan",
    "SetupError",
    "Zipf",
    "run_id_from_env",
    "setup_catalog",
]

SCENARIOS = {"flash": "fs", "reader": "pp", "checkout": "ck", "retry": "rt"}
"""Scenario name -> client id prefix (the client id is prefix + run id)."""
_RUN_ID = re.compile(r"[a-z0-9]{1,12}")
_SETUP_NAMESPACE = uuid.UUID("6f6e6861-6e64-4c6f-8164-746573747321")
_BULK = 500


class SetupError(RuntimeError):
    """The catalog could not be created (the message says which request failed)."""


def run_id_from_env() -> str:
    """``ONHAND_LOAD_RUN`` (1..12 of ``[a-z0-9]``), else 8 random hex digits."""
    run = os.environ.get("ONHAND_LOAD_RUN") or uuid.uuid4().hex[:8]
    if not _RUN_ID.fullmatch(run):
        raise SetupError(f"ONHAND_LOAD_RUN must match {_RUN_ID.pattern}, not {run!r}")
    return run


@dataclass(frozen=True)
class Plan:
    """How big the run's catalog is."""

    skus: int = 400
    units_per_record: int = 300
    flash_skus: int = 3
    flash_units: tuple[int, int] = (25, 15)
    """Units of each flash SKU in W1 and W2: demand is far above."""
    max_active_holds: int = 1_000_000


@dataclass(frozen=True)
class Warehouse:
    warehouse_id: str
    latitude: float
    longitude: float
    priority: int


_SITES = ((52.52, 13.405), (48.137, 11.575), (53.551, 9.994))


@dataclass(frozen=True)
class Catalog:
    run: str
    prefix: str
    warehouses: tuple[Warehouse, ...]
    skus: tuple[str, ...]
    """Catalog SKUs by popularity rank (``skus[0]`` is the most popular)."""
    flash_skus: tuple[str, ...]
    flash_units: int
    """Units received per flash SKU (all warehouses)."""
    tokens: dict[str, str] = field(default_factory=dict)
    clients: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """A summary without secrets (for logs and the run summary)."""
        return {
            "run": self.run,
            "prefix": self.prefix,
            "warehouses": [w.warehouse_id for w in self.warehouses],
            "skus": len(self.skus),
            "flash_skus": list(self.flash_skus),
            "flash_units": self.flash_units,
            "clients": dict(self.clients),
        }


class Zipf:
    """Zipf-distributed picks over ``items`` (rank 1 = ``items[0]``): P(k) ∝ 1 / k**s."""

    def __init__(self, items: tuple[str, ...], s: float = 1.1) -> None:
        if not items:
            raise ValueError("no items")
        self.items = items
        self._cum = list(itertools.accumulate(1.0 / (k**s) for k in range(1, len(items) + 1)))

    def pick(self, rng: random.Random) -> str:
        x = rng.random() * self._cum[-1]
        return self.items[min(bisect.bisect_left(self._cum, x), len(self.items) - 1)]

    def pick_distinct(self, rng: random.Random, n: int) -> list[str]:
        """``n`` distinct items (all of them if ``n`` >= their number), Zipf-weighted."""
        if n >= len(self.items):
            return list(self.items)
        chosen: dict[str, None] = {}
        for _ in range(50 * n):
            chosen[self.pick(rng)] = None
            if len(chosen) == n:
                return list(chosen)
        rest = [s for s in self.items if s not in chosen]  # a long tail: fill uniformly
        return [*chosen, *rng.sample(rest, n - len(chosen))]


class _Admin:
    """POSTs with the admin key and deterministic Idempotency-Keys; retries what is safe."""

    def __init__(self, base_url: str, admin_key: str, run: str, timeout_s: float) -> None:
        self.run = run
        self.deadline_s = timeout_s
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        )

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, body: object, step: str, ok: tuple[int, ...]) -> httpx.Response:
        key = str(uuid.uuid5(_SETUP_NAMESPACE, f"{self.run}:{step}"))
        deadline = time.monotonic() + self.deadline_s
        while True:
            try:
                resp = self.http.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    raise SetupError(f"POST {path} ({step}): {exc!r}") from exc
                time.sleep(0.5)
                continue
            if resp.status_code in ok:
                return resp
            retryable = resp.status_code == 503 or (
                resp.status_code == 409 and "in-flight" in resp.text
            )
            if not retryable or time.monotonic() > deadline:
                raise SetupError(f"POST {path} ({step}): {resp.status_code} {resp.text[:500]}")
            time.sleep(float(resp.headers.get("Retry-After", "0.5")))


def setup_catalog(
    base_url: str,
    admin_key: str,
    run: str,
    plan: Plan | None = None,
    *,
    timeout_s: float = 60.0,
) -> Catalog:
    """Create the run's warehouses, SKUs with stock, and one API key per scenario."""
    plan = plan or Plan()
    prefix = f"LT{run}-"
    warehouses = tuple(
        Warehouse(f"{prefix}W{i + 1}", lat, lon, i) for i, (lat, lon) in enumerate(_SITES)
    )
    skus = tuple(f"{prefix}S{i:04d}" for i in range(plan.skus))
    flash = tuple(f"{prefix}HOT{i + 1}" for i in range(plan.flash_skus))
    admin = _Admin(base_url, admin_key, run, timeout_s)
    try:
        for w in warehouses:
            body = {
                "warehouse_id": w.warehouse_id,
                "name": f"load test {run}",
                "latitude": w.latitude,
                "longitude": w.longitude,
                "priority": w.priority,
            }
            # 409 already-exists: an earlier setup of this run made it.
            admin.post("/v1/warehouses", body, f"wh:{w.warehouse_id}", (200, 201, 409))
        _receive_catalog(admin, skus, warehouses, plan)
        for sku in flash:
            for w, units in zip(warehouses, plan.flash_units, strict=False):
                body = {"sku": sku, "warehouse": w.warehouse_id, "qty": units, "reference": run}
                admin.post("/v1/stock-receipts", body, f"rcv:{sku}:{w.warehouse_id}", (200, 201))
        tokens: dict[str, str] = {}
        clients: dict[str, str] = {}
        for scenario, short in SCENARIOS.items():
            client_id = f"{short}{run}"
            body = {
                "client_id": client_id,
                "scopes": ["reservations:write", "availability:read"],
                "name": f"load test {run} {scenario}",
                "max_active_holds": plan.max_active_holds,
            }
            resp = admin.post("/v1/api-keys", body, f"key:{scenario}", (200, 201))
            tokens[scenario] = str(resp.json()["token"])
            clients[scenario] = client_id
    finally:
        admin.close()
    return Catalog(
        run=run,
        prefix=prefix,
        warehouses=warehouses,
        skus=skus,
        flash_skus=flash,
        flash_units=sum(plan.flash_units[: len(warehouses)]),
        tokens=tokens,
        clients=clients,
    )


def _receive_catalog(
    admin: _Admin, skus: tuple[str, ...], warehouses: tuple[Warehouse, ...], plan: Plan
) -> None:
    """Each catalog SKU gets stock in two of the warehouses (bulk receipts, 500 a call)."""
    items = []
    for i, sku in enumerate(skus):
        for w in (warehouses[i % len(warehouses)], warehouses[(i + 1) % len(warehouses)]):
            items.append({"sku": sku, "warehouse": w.warehouse_id, "qty": plan.units_per_record})
    for start in range(0, len(items), _BULK):
        chunk = items[start : start + _BULK]
        resp = admin.post("/v1/stock-receipts:bulk", {"items": chunk}, f"bulk:{start}", (207,))
        bad = [r for r in resp.json()["results"] if r["status"] not in (200, 201)]
        if bad:
            raise SetupError(f"bulk receipts failed: {bad[:3]}")
