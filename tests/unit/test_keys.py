"""Key layout: injective, one slot per partition, ids cannot move a key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from onhand.keys import Keys

ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


@given(sku=ids, wh=ids)
def test_every_key_of_a_sku_shares_the_cluster_slot_of_its_partition_stream(sku, wh):
    keys = Keys("onhand", 16)
    slot = key_slot(keys.sku_stream(sku).encode())
    for name in (keys.stock(sku, wh), keys.sku(sku), keys.warehouses(sku), keys.holds(sku)):
        assert key_slot(name.encode()) == slot


@given(rid=ids)
def test_a_reservation_header_shares_the_slot_of_its_deadline_index(rid):
    keys = Keys("onhand", 16)
    assert key_slot(keys.reservation(rid).encode()) == key_slot(
        keys.reservation_deadlines(rid).encode()
    )


@given(a=st.tuples(ids, ids), b=st.tuples(ids, ids))
def test_distinct_sku_warehouse_pairs_never_share_a_stock_key(a, b):
    keys = Keys("onhand", 16)
    if a != b:
        assert keys.stock(*a) != keys.stock(*b)


def test_partitions_are_stable_across_processes():
    # crc32, not Python's salted hash(): these values must never change
    keys = Keys("onhand", 16)
    assert [keys.partition(s) for s in ("SKU-1", "SKU-2", "ABC")] == [4, 14, 8]


@pytest.mark.parametrize("namespace", ["", "a{b}", "a:b", "x" * 33])
def test_a_namespace_that_could_move_or_collide_keys_is_refused(namespace):
    with pytest.raises(ValueError):
        Keys(namespace)


def test_grouped_key_builders_equal_the_single_ones():
    k = Keys("ns", 16)
    for ident in ("a", "SKU-1", "r.42", "x" * 64):
        assert k.reservation_keys(ident) == (
            k.reservation(ident),
            k.reservation_deadlines(ident),
            k.reservation_ready(ident),
        )
        assert k.line_keys(ident) == (
            k.sku(ident),
            k.warehouses(ident),
            k.holds(ident),
            k.sku_stream(ident),
            k.sku_ready(ident),
        )
        assert k.stocks(ident, ["W1", "w-2"]) == [k.stock(ident, "W1"), k.stock(ident, "w-2")]
        sku_keys = k.sku_keys(ident)
        assert tuple(sku_keys[:5]) == k.line_keys(ident)
        assert sku_keys.stock_head + "W1" == k.stock(ident, "W1")
