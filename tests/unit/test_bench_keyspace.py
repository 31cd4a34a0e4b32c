"""How many filler keys the benchmark adds so that no run pays for a doubling of
Redis's key tables (loadtests.keyspace): pure arithmetic, checked against a search."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from loadtests.keyspace import MIN_TABLE, filler_needed, table_size


def _room(count: int, growth: int) -> bool:
    return count + growth <= table_size(count)


def test_a_table_is_the_smallest_power_of_two_that_holds_its_keys():
    assert [table_size(n) for n in (0, 1, 4, 5, 8, 9, 1 << 20, (1 << 20) + 1)] == [
        MIN_TABLE,
        MIN_TABLE,
        4,
        8,
        8,
        16,
        1 << 20,
        1 << 21,
    ]


def test_no_filler_when_both_tables_have_room_for_the_run():
    n = filler_needed(keys=600_000, volatile=300_000, growth=400_000, volatile_growth=200_000)
    assert n == 0  # tables of 1,048,576 and 524,288


def test_a_run_that_would_fill_the_table_first_pushes_it_just_past_a_power_of_two():
    n = filler_needed(keys=1_000, volatile=0, growth=200_000, volatile_growth=0)
    assert 1_000 + n == (1 << 18) + 1  # the table doubles now, to 2^19: room for 262,143
    assert _room(1_000 + n, 200_000)


def test_the_ttl_table_gets_room_too_even_when_the_keys_table_has_it():
    # 100,000 keys in a 131,072 table, 60,000 of them with a TTL in a 65,536 table
    n = filler_needed(keys=100_000, volatile=60_000, growth=20_000, volatile_growth=10_000)
    assert n > 0
    assert _room(100_000 + n, 20_000) and _room(60_000 + n, 10_000)


@given(
    keys=st.integers(0, 5_000),
    volatile_share=st.floats(0, 1),
    growth=st.integers(0, 5_000),
    volatile_growth_share=st.floats(0, 1),
)
def test_the_answer_is_the_fewest_filler_keys_that_leave_room_in_both_tables(
    keys: int, volatile_share: float, growth: int, volatile_growth_share: float
):
    volatile = int(keys * volatile_share)
    volatile_growth = int(growth * volatile_growth_share)
    n = filler_needed(keys, volatile, growth, volatile_growth)
    assert _room(keys + n, growth) and _room(volatile + n, volatile_growth)
    fewer = [
        m for m in range(n) if _room(keys + m, growth) and _room(volatile + m, volatile_growth)
    ]
    assert fewer == []
