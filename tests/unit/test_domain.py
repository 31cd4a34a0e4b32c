"""Validation of domain values at the Python boundary."""

from __future__ import annotations

import pytest

from onhand.domain import MAX_QTY, Line, ReserveRequest, SkuPolicy, check_id
from onhand.errors import InvalidInput

BAD_QTYS = [0, -1, 1.5, True, "5", 2**53, 10**30, None, float("nan")]
BAD_IDS = ["", "a:b", "a{b}", "{p1}", "a b", "a\nb", "é", "a" * 65, "x" * 10_000, 5]


@pytest.mark.parametrize("qty", BAD_QTYS, ids=repr)
def test_a_line_quantity_must_be_an_int_within_bounds(qty):
    with pytest.raises(InvalidInput):
        Line("SKU", qty, ("W",))


@pytest.mark.parametrize("ident", BAD_IDS, ids=lambda v: repr(v)[:20])
def test_ids_outside_the_allow_list_are_rejected(ident):
    with pytest.raises(InvalidInput):
        check_id("sku", ident)


def test_the_largest_line_quantity_is_accepted():
    assert Line("SKU", MAX_QTY, ("W",)).qty == MAX_QTY


def test_an_order_may_list_each_sku_once():
    with pytest.raises(InvalidInput):
        ReserveRequest("r1", (Line("A", 1, ("W",)), Line("A", 2, ("W",))), ttl_ms=1000)


def test_a_line_may_list_each_warehouse_once():
    with pytest.raises(InvalidInput):
        Line("A", 1, ("W", "W"))


def test_the_fingerprint_covers_the_payload_but_not_the_actor():
    a = ReserveRequest("r1", (Line("A", 1, ("W",)),), ttl_ms=1000, actor="alice")
    b = ReserveRequest("r1", (Line("A", 1, ("W",)),), ttl_ms=1000, actor="bob")
    c = ReserveRequest("r1", (Line("A", 2, ("W",)),), ttl_ms=1000)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert len(a.fingerprint()) == 64


def test_preorder_allowance_applies_only_before_the_release_date():
    policy = SkuPolicy(backorder_limit=2, preorder_limit=9, preorder_release_ms=1_000)
    assert policy.allowance(999) == 9
    assert policy.allowance(1_000) == 2


@pytest.mark.parametrize("field", ["backorder_limit", "reorder_point", "max_line_qty"])
def test_policy_numbers_must_be_ints(field):
    with pytest.raises(InvalidInput):
        SkuPolicy(**{field: 1.5})  # type: ignore[arg-type]
