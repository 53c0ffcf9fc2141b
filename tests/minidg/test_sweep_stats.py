"""src.minidg.stats: the sweep's seed statistics against independent formulas and scipy's tests."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from src.minidg.stats import (
    TTest,
    compare,
    comparison_table,
    mean_std,
    paired_t,
    significant,
    two_sided_p,
    verdict,
    welch_t,
)

# five seeds of two methods (made-up shifted-mean mIoU)
A = [23.5, 23.7, 24.1, 23.7, 23.5]
B = [24.2, 23.0, 22.5, 24.0, 21.8]


def test_two_sided_p_matches_the_closed_forms_and_the_table() -> None:
    # df = 1 (Cauchy): P(|T| >= t) = 1 - 2/pi atan(t); df = 2: 1 - t / sqrt(2 + t^2)
    for t in (0.3, 1.0, 2.5, 7.0):
        assert two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)
        assert two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert two_sided_p(2.776445105, 4) == pytest.approx(0.05, abs=1e-8)  # the t table's 5% point for df = 4
    assert two_sided_p(0.0, 3) == pytest.approx(1.0)
    assert math.isnan(two_sided_p(math.nan, 4)) and math.isnan(two_sided_p(1.0, 0))


def test_welch_t_by_hand_and_against_scipy() -> None:
    va, vb = statistics.variance(A) / 5, statistics.variance(B) / 5
    t = (statistics.mean(A) - statistics.mean(B)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)
    got = welch_t(A, B)
    assert got.t == pytest.approx(t, rel=1e-12) and got.df == pytest.approx(df, rel=1e-12)
    ref = scipy_stats.ttest_ind(A, B, equal_var=False)
    assert got.t == pytest.approx(ref.statistic, rel=1e-10) and got.p == pytest.approx(ref.pvalue, rel=1e-8)
    assert welch_t(B, A).t == pytest.approx(-got.t) and welch_t(B, A).p == pytest.approx(got.p)


def test_paired_t_by_hand_and_against_scipy() -> None:
    d = [x - y for x, y in zip(A, B)]
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(5))
    got = paired_t(A, B)
    assert got.t == pytest.approx(t, rel=1e-12) and got.df == 4
    ref = scipy_stats.ttest_rel(A, B)
    assert got.t == pytest.approx(ref.statistic, rel=1e-10) and got.p == pytest.approx(ref.pvalue, rel=1e-8)
    # a constant shift has no spread: the test is undefined, not infinitely significant
    shifted = paired_t([x + 1.0 for x in B], B)
    assert math.isnan(shifted.t) and math.isnan(shifted.p) and not significant(shifted)


def test_bad_inputs_say_what_is_needed() -> None:
    with pytest.raises(ValueError, match="at least 2 values per group"):
        welch_t([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="as many values"):
        paired_t([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])
    assert math.isnan(mean_std([3.0])[1])
    with pytest.raises(ValueError, match="at least 2 seeds that both ran"):
        compare("a", "b", "m", {"a": {0: 1.0, 1: 2.0}, "b": {1: 2.0, 2: 3.0}})


def test_compare_pairs_by_seed_and_the_verdict_and_table_say_so() -> None:
    scores = {"depthforge": dict(enumerate(A)), "rein": {**dict(enumerate(B)), 7: 30.0}}  # seed 7: REIN only
    c = compare("depthforge", "rein", "mean shifted", scores)
    assert c.seeds == (0, 1, 2, 3, 4) and c.a_ahead == 3
    assert c.diffs == pytest.approx(tuple(x - y for x, y in zip(A, B)))
    assert c.mean_diff == pytest.approx(statistics.mean(A) - statistics.mean(B))
    assert (c.mean_a, c.std_a) == pytest.approx((statistics.mean(A), statistics.stdev(A)))
    line = verdict(c)
    p = scipy_stats.ttest_rel(A, B).pvalue
    assert line.startswith(f"depthforge − rein = {c.mean_diff:+.2f} ± {c.std_diff:.2f} mIoU on the shifted mean")
    assert f"paired t = {c.paired.t:.2f}, df = 4, p = {p:.3f}" in line
    assert f"Welch t = {c.welch.t:.2f}, df = {c.welch.df:.1f}" in line
    assert line.endswith("not significant at 5%")
    clear = {"a": {s: 30.0 + 0.1 * s for s in range(5)}, "b": {s: 20.0 - 0.1 * s for s in range(5)}}
    big = compare("a", "b", "m", clear)
    assert significant(big.paired) and verdict(big).endswith("significant at 5% (a ahead)")
    table = comparison_table([c])
    assert "| mean shifted | 23.70 ± 0.24 | " in table and "| 3 of 5 |" in table
    assert f"| -0.70, +0.70, +1.60, -0.30, +1.70 | +0.60 ± {c.std_diff:.2f} | {c.paired.t:.2f} (4) |" in table


def test_ttest_is_a_plain_record() -> None:
    assert TTest(1.0, 4.0, 0.37) == TTest(1.0, 4.0, 0.37)
