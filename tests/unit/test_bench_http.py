"""The interleaved HTTP comparison (loadtests.bench_http): how rounds become ratios.

The servers and wrk are the benchmark's own (loadtests.bench); what is tested here is
the arithmetic that turns rounds into the figures it prints."""

from __future__ import annotations

import pytest
from loadtests.bench_http import Pair, Sample, report, summarize


def _pair(base: float, new: float, *, failures: int = 0) -> Pair:
    return Pair(
        Sample(rate=base, p99_ms=20.0, cpu_us=100.0, failures=0),
        Sample(rate=new, p99_ms=10.0, cpu_us=90.0, failures=failures),
    )


def test_each_round_is_compared_with_its_own_partner_not_with_the_other_rounds():
    # The machine changes speed between the rounds; two of three pairs say +10 %. The
    # medians of each side (6,000 against 5,400) would say -10 %.
    summary = summarize([_pair(8_000, 8_800), _pair(4_000, 4_400), _pair(6_000, 5_400)])
    assert summary.rate_ratios == pytest.approx([1.1, 1.1, 0.9])
    assert summary.rate_ratio == pytest.approx(1.1)
    assert summary.base_rate == 6_000 and summary.new_rate == 5_400  # medians


def test_the_verdict_says_mixed_when_the_rounds_disagree():
    assert summarize([_pair(100, 110), _pair(100, 120)]).consistent == "faster in every round"
    assert summarize([_pair(100, 90), _pair(100, 99)]).consistent == "slower in every round"
    assert summarize([_pair(100, 110), _pair(100, 95)]).consistent.startswith("mixed")


def test_latency_and_cpu_ratios_are_new_over_base():
    summary = summarize([_pair(100, 100)])
    assert summary.p99_ratio == pytest.approx(0.5)
    assert summary.cpu_ratio == pytest.approx(0.9)


def test_failures_of_either_revision_are_counted():
    assert summarize([_pair(100, 100, failures=3), _pair(100, 100)]).failures == 3


def test_no_rounds_is_an_error_not_a_ratio_of_one():
    with pytest.raises(ValueError):
        summarize([])


def test_the_report_has_a_row_per_round_and_the_median_ratio():
    pairs = [_pair(5_000, 5_500), _pair(6_000, 5_700)]
    text = report(pairs, summarize(pairs), held_gap=12, slack=256)
    assert "| 1 | 5,000 | 5,500 | 1.100 |" in text
    assert "| 2 | 6,000 | 5,700 | 0.950 |" in text
    assert "rate 1.025 x (mixed" in text
    assert "units held - 201 answers: 12 (0..256" in text
