"""The availability body and ETag: the one-pass renderer against the domain's own
definitions (``SkuAvailability`` properties), for arbitrary levels and policies."""

from __future__ import annotations

import hashlib

import orjson
from hypothesis import given
from hypothesis import strategies as st

from onhand.api.metrics import ApiMetrics
from onhand.api.routes.availability import bulk_body, etag_of, render, rendered, single_body
from onhand.domain import SkuAvailability, SkuPolicy, StockLevel

counts = st.integers(0, 10**6)
levels = st.builds(
    StockLevel,
    sku=st.just("S"),
    warehouse=st.sampled_from(["A", "B", "C"]),
    on_hand=counts,
    held=counts,
    committed=counts,
    safety_stock=counts,
    version=counts,
    low=st.booleans(),
)
policies = st.builds(
    SkuPolicy,
    backorder_limit=counts,
    preorder_limit=st.sampled_from([0, 0, 5]),
    preorder_release_ms=st.sampled_from([0, 1_000, 10**13]),
    lead_time_days=st.sampled_from([0, 3]),
)
skus = st.builds(
    SkuAvailability,
    sku=st.just("S"),
    levels=st.lists(levels, max_size=4).map(tuple),
    policy=policies,
    beyond=counts,
    at_ms=st.integers(0, 2 * 10**12),
)


def reference(a: SkuAvailability) -> dict[str, object]:
    """The body as the domain defines it (the renderer before it was made one-pass)."""
    policy = a.policy
    restock = None
    if policy.preorder_limit > 0 and a.at_ms < policy.preorder_release_ms:
        restock = policy.preorder_release_ms
    return {
        "sku": a.sku,
        "available": a.available,
        "on_hand": a.on_hand,
        "held": a.held,
        "committed": a.committed,
        "backorder_remaining": a.backorder_remaining(),
        "preorder_remaining": a.preorder_remaining(),
        "low_stock": a.low_stock,
        "expected_restock_ms": restock,
        "warehouses": [
            {
                "warehouse": lvl.warehouse,
                "available": max(0, lvl.available),
                "on_hand": lvl.on_hand,
                "held": lvl.held,
                "committed": lvl.committed,
                "safety_stock": lvl.safety_stock,
                "low_stock": lvl.low,
                "version": lvl.version,
            }
            for lvl in a.levels
        ],
        "at_ms": a.at_ms,
    }


@given(st.lists(skus, max_size=4))
def test_bodies_and_etag_match_the_domain_definitions(found: list[SkuAvailability]) -> None:
    metrics = ApiMetrics()
    data, etag = rendered(found, metrics)
    bodies = orjson.loads(data)
    oversold = metrics.registry.get_sample_value("onhand_oversell_total")
    assert oversold == sum(a.unaccounted for a in found)
    expected = [reference(a) for a in found]
    assert data == orjson.dumps(expected)  # same members, same order, same bytes
    if found:
        assert single_body(orjson.dumps(expected[:1])) == orjson.dumps(expected[0])
    assert orjson.loads(bulk_body(data)) == {"items": expected}
    assert [render(a) for a in found] == expected
    stable = [{k: v for k, v in b.items() if k != "at_ms"} for b in expected]
    digest = hashlib.blake2b(orjson.dumps(stable), digest_size=12).hexdigest()
    assert etag == etag_of(bodies) == f'W/"{digest}"'
    # The clock reading alone never changes the ETag.
    later = [SkuAvailability(a.sku, a.levels, a.policy, a.beyond, a.at_ms + 1) for a in found]
    if all(b["expected_restock_ms"] is None for b in bodies):
        assert rendered(later)[1] == etag
