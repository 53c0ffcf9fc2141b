"""Seed statistics of a sweep: mean ± std, Welch's and the paired t-test, and a one-line verdict.

Pure functions of per-seed numbers, so that `scripts/minidg_sweep.py` and its tests share them. Two methods are
compared on the seeds both ran; the paired test pairs the runs of one seed, which see the same data order and the
same augmentations (the seed drives both), so it removes the part of the seed noise they share.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class TTest:
    """A t statistic, its degrees of freedom and its two-sided p-value (NaN where the test is undefined)."""

    t: float
    df: float
    p: float


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the std is NaN for a single value."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom (NaN when t or df is not finite/positive)."""
    if not (math.isfinite(t) and math.isfinite(df) and df > 0):
        return math.nan
    return float(2.0 * _scipy_stats.t.sf(abs(t), df))


def welch_t(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Welch's unequal-variance t-test of mean(a) − mean(b), with the Welch–Satterthwaite degrees of freedom.

    Needs at least two values on each side; with zero variance on both sides the test is undefined (NaN)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t needs at least 2 values per group, got {len(a)} and {len(b)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return TTest(math.nan, math.nan, math.nan)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return TTest(t, df, two_sided_p(t, df))


def paired_t(a: Sequence[float], b: Sequence[float]) -> TTest:
    """The paired t-test of the differences a_i − b_i (n − 1 degrees of freedom); NaN if they are all equal."""
    if len(a) != len(b):
        raise ValueError(f"a paired test needs as many values on each side, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a paired test needs at least 2 pairs, got {len(a)}")
    diffs = [x - y for x, y in zip(a, b)]
    sd = statistics.stdev(diffs)
    if sd == 0:
        return TTest(math.nan, len(diffs) - 1, math.nan)
    t = statistics.fmean(diffs) / (sd / math.sqrt(len(diffs)))
    return TTest(t, len(diffs) - 1, two_sided_p(t, len(diffs) - 1))


@dataclass(frozen=True)
class Comparison:
    """Method a against method b on one metric, over the seeds both ran (in ``seeds`` order)."""

    a: str
    b: str
    metric: str
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    """a − b per seed."""
    mean_a: float
    std_a: float
    mean_b: float
    std_b: float
    paired: TTest
    welch: TTest

    @property
    def mean_diff(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def std_diff(self) -> float:
        return statistics.stdev(self.diffs) if len(self.diffs) > 1 else math.nan

    @property
    def a_ahead(self) -> int:
        """On how many seeds a scores higher than b."""
        return sum(d > 0 for d in self.diffs)


def compare(a: str, b: str, metric: str, scores: Mapping[str, Mapping[int, float]]) -> Comparison:
    """``scores[method][seed]`` of one metric -> a vs b on the seeds both have (at least 2)."""
    seeds = tuple(sorted(set(scores[a]) & set(scores[b])))
    if len(seeds) < 2:
        raise ValueError(f"comparing {a} with {b} needs at least 2 seeds that both ran, got {list(seeds)}")
    xa, xb = [scores[a][s] for s in seeds], [scores[b][s] for s in seeds]
    (ma, sa), (mb, sb) = mean_std(xa), mean_std(xb)
    return Comparison(
        a, b, metric, seeds, tuple(x - y for x, y in zip(xa, xb)), ma, sa, mb, sb, paired_t(xa, xb), welch_t(xa, xb)
    )


def significant(test: TTest, alpha: float = 0.05) -> bool:
    """Whether the two-sided p-value is below ``alpha`` (False when undefined)."""
    return math.isfinite(test.p) and test.p < alpha


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def verdict(c: Comparison, what: str = "the shifted mean", alpha: float = 0.05) -> str:
    """One line: the mean paired difference ± its std over seeds, both tests, and whether the paired one (the
    primary test: the runs of a seed share data order and augmentations) is significant at ``alpha``."""
    level = f"{alpha * 100:g}%"
    if significant(c.paired, alpha):
        sign = f"{c.a} ahead" if c.mean_diff > 0 else f"{c.b} ahead"
        outcome = f"significant at {level} ({sign})"
    else:
        outcome = f"not significant at {level}"
    return (
        f"{c.a} − {c.b} = {c.mean_diff:+.2f} ± {c.std_diff:.2f} mIoU on {what} ({len(c.seeds)} seeds, {c.a} ahead on "
        f"{c.a_ahead}): paired t = {c.paired.t:.2f}, df = {c.paired.df:g}, p = {_fmt_p(c.paired.p)}; Welch t = "
        f"{c.welch.t:.2f}, df = {c.welch.df:.1f}, p = {_fmt_p(c.welch.p)}: {outcome}"
    )


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """A markdown table, one row per metric: both methods' mean ± std, the paired difference per seed and its mean
    ± std, the paired and Welch tests."""
    if not comparisons:
        return ""
    a, b = comparisons[0].a, comparisons[0].b
    seeds = comparisons[0].seeds
    lines = [
        f"| metric | {a} | {b} | {a} − {b} per seed ({', '.join(map(str, seeds))}) | mean ± std | paired t (df) | "
        f"p | Welch t (df) | p | {a} ahead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.metric} | {c.mean_a:.2f} ± {c.std_a:.2f} | {c.mean_b:.2f} ± {c.std_b:.2f} | "
            + ", ".join(f"{d:+.2f}" for d in c.diffs)
            + f" | {c.mean_diff:+.2f} ± {c.std_diff:.2f} | {c.paired.t:.2f} ({c.paired.df:g}) | {_fmt_p(c.paired.p)} "
            f"| {c.welch.t:.2f} ({c.welch.df:.1f}) | {_fmt_p(c.welch.p)} | {c.a_ahead} of {len(c.seeds)} |"
        )
    return "\n".join(lines)
