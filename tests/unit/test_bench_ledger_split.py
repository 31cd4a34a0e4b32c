"""The ledger's CPU by events per transaction (loadtests.bench_ledger ``--only tx``):
how the rounds' samples become the split into a part per transaction and per event.

The drains themselves are the writer's against a real Redis and Postgres; what is
tested here is the arithmetic."""

from __future__ import annotations

import pytest
from loadtests.bench_ledger import split_per_transaction


def test_the_split_recovers_a_fixed_cost_per_transaction_and_a_cost_per_event():
    # transactions costing 6 ms + 30 µs per event, measured as µs per event, 2 rounds
    samples = {n: [30 + 6_000 / n] * 2 for n in (100, 300, 1_000, 3_000)}
    fixed_ms, per_event_us = split_per_transaction(samples)
    assert fixed_ms == pytest.approx(6.0)
    assert per_event_us == pytest.approx(30.0)


def test_rounds_that_disagree_are_fitted_together_not_averaged_first():
    # one size's two rounds straddle the line: the fit goes through their middle
    samples = {100: [80.0, 100.0], 1_000: [36.0]}
    fixed_ms, per_event_us = split_per_transaction(samples)
    assert fixed_ms * 1000 / 100 + per_event_us == pytest.approx(90.0)
    assert fixed_ms * 1000 / 1_000 + per_event_us == pytest.approx(36.0)


def test_a_split_from_one_transaction_size_is_refused_not_guessed():
    with pytest.raises(ValueError):
        split_per_transaction({1_000: [40.0, 41.0]})
