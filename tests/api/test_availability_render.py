"""The availability body and ETag: the one-pass renderer against the domain's own
definitions (``SkuAvailability`` properties), for arbitrary levels and policies."""

from __future__ import annotations

import hashlib

import orjson
from hypothesis import given
from hypothesis import strategies as st

from onhand.api.metrics import ApiMetrics
from onhand.api.routes.availability import (
    RenderMemo,
    bulk_body,
    etag_of,
    render,
    rendered,
    single_body,
)
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


def oversold(metrics: ApiMetrics) -> float | None:
    return metrics.registry.get_sample_value("onhand_oversell_total")


@given(
    st.lists(
        st.builds(
            SkuAvailability,
            sku=st.sampled_from(["S", "T", "U"]),
            levels=st.lists(levels, max_size=3).map(tuple),
            policy=policies,
        ),
        min_size=1,
        max_size=4,
    ),
    st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2 * 10**12))),
        max_size=8,
    ),
)
def test_a_render_memo_answers_exactly_what_a_fresh_render_would(
    pool: list[SkuAvailability], reads: list[list[tuple[int, int, int]]]
) -> None:
    # Reads draw the same levels and policy objects again (as the engine hands them
    # out for an unchanged SKU) with other exposures and clock readings.
    memo = RenderMemo(max_skus=2)
    for read in reads:
        found = [
            SkuAvailability(base.sku, base.levels, base.policy, beyond, at_ms)
            for base, beyond, at_ms in ((pool[i % len(pool)], b, t) for i, b, t in read)
        ]
        with_memo, fresh = ApiMetrics(), ApiMetrics()
        assert rendered(found, with_memo, memo) == rendered(found, fresh)
        assert oversold(with_memo) == oversold(fresh)


def test_a_memo_reuses_a_skus_text_and_still_counts_its_oversell_on_every_read() -> None:
    level = StockLevel("S", "A", on_hand=1, held=3, version=4)  # 2 units unaccounted
    first = SkuAvailability("S", (level,), SkuPolicy(), 0, 1_000)
    later = SkuAvailability("S", first.levels, first.policy, 0, 2_000)
    memo, metrics = RenderMemo(), ApiMetrics()
    text = memo.stable(first, metrics)
    assert memo.stable(later, metrics) is text
    assert oversold(metrics) == 2 * first.unaccounted == 4
    assert rendered([later], None, memo)[0] == orjson.dumps([reference(later)])
    rebuilt = SkuAvailability("S", (level,), first.policy, 0, 2_000)  # another levels object
    again = memo.stable(rebuilt, None)
    assert again is not text and again == text
