"""Uncertainty of metric scores: confidence intervals of the mean, best marks, paired tests.

A table of means over a handful of images ranks methods on noise. Every
:class:`~xai_toolbox.MetricResult` therefore carries a 95 % confidence interval of its mean,
from a **percentile bootstrap over images** (10 000 resamples, seed 0, so the same scores
always give the same interval). Tables mark as best only the methods whose interval no other
method beats (:func:`not_beaten`), and :func:`paired_test` tells whether two methods differ
on the same images (Wilcoxon signed-rank test, with a paired-bootstrap interval of the mean
difference).

Example:
    >>> result.ci                                     # (low, high) of the mean
    >>> xt.paired_test(table.results["rise"]["deletion"], table.results["saliency"]["deletion"])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CONFIDENCE",
    "LARGE",
    "RESAMPLES",
    "PairedTest",
    "bootstrap_ci",
    "format_interval",
    "not_beaten",
    "paired_test",
]

#: Confidence level of the intervals shown in tables and reports.
CONFIDENCE = 0.95
#: Bootstrap resamples (as SciPy's ``stats.bootstrap`` default, rounded).
RESAMPLES = 10_000
#: Above this many images the interval is Student's t (the bootstrap's cost grows with the
#: images, and the two agree closely there).
LARGE = 2_000
#: Resamples drawn at once: bounds the memory of the bootstrap (rows × images indices).
_BLOCK = 2_000


def bootstrap_ci(
    scores: Any, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``scores`` over images.

    NaN scores are left out. Resamples draw the remaining images with replacement from
    ``np.random.default_rng(seed)``: the same scores give the same interval. With fewer than
    two finite scores the interval is undefined: ``(nan, nan)``. Identical scores give a
    zero-width interval. Above :data:`LARGE` images the interval is Student's
    ``mean ± t·s/√n`` instead (the central limit theorem holds there, and the bootstrap would
    cost resamples × images).

    The percentile bootstrap is slightly narrow for very few images (its coverage is below
    the nominal level under about 20 images); compare two methods on the same images with
    :func:`paired_test` rather than by eye.

    Args:
        scores: per-image scores ``(N,)``.
        confidence: the interval's level, in ``(0, 1)``.
        resamples: bootstrap resamples.
        seed: seed of the resampling.

    Example:
        >>> bootstrap_ci([0.1, 0.4, 0.2, 0.3])
        (0.15, 0.35)
    """
    values = _finite(scores)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if values.size < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    alpha = (1.0 - confidence) / 2.0
    if values.size > LARGE:
        from scipy.stats import t

        half = float(t.ppf(1.0 - alpha, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
        return float(values.mean() - half), float(values.mean() + half)
    means = _bootstrap_means(values, resamples, seed)
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _finite(scores: Any) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    return values[~np.isnan(values)]


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` resamples of ``values`` (drawn in blocks of bounded size)."""
    rng = np.random.default_rng(seed)
    n = values.size
    block = max(1, min(resamples, _BLOCK * 1_000 // max(n, 1_000)))
    parts = []
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        parts.append(values[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    return np.concatenate(parts)


def not_beaten(
    intervals: Mapping[str, tuple[float, float, float]], higher_is_better: bool
) -> set[str]:
    """The keys whose interval no other key's interval beats outright: the "best" marks.

    ``intervals`` maps a method to ``(mean, low, high)``. A method is beaten when another's
    whole interval lies on the better side of its own (higher is better: the other's low is
    above its high). An undefined interval (NaN, e.g. one image) counts as the mean alone, so
    without intervals the best means are marked (ties all count); methods without a finite
    mean are never marked.

    Example:
        >>> sorted(not_beaten({"a": (0.5, 0.4, 0.6), "b": (0.45, 0.3, 0.55),
        ...                    "c": (0.1, 0.0, 0.2)}, higher_is_better=True))
        ['a', 'b']
    """
    bounds = {}
    for key, (mean, low, high) in intervals.items():
        if not math.isfinite(mean):
            continue
        if not (math.isfinite(low) and math.isfinite(high)):
            low = high = mean
        # Compare as "higher is better" throughout.
        bounds[key] = (low, high) if higher_is_better else (-high, -low)
    if not bounds:
        return set()
    best_low = max(low for low, _ in bounds.values())
    # Beaten iff some other interval's low lies above this high; one's own low never does.
    tol = 1e-12 * max(1.0, abs(best_low))
    return {key for key, (_, high) in bounds.items() if high >= best_low - tol}


@dataclass(frozen=True)
class PairedTest:
    """The outcome of :func:`paired_test` on two methods scored on the same images.

    Attributes:
        metric: the metric's name.
        n: images with a finite score for both methods (the test's sample).
        mean_difference: mean of ``a − b`` over those images.
        ci: 95 % paired-bootstrap interval of ``mean_difference`` (``(nan, nan)`` below 2 images).
        statistic: the Wilcoxon signed-rank statistic (NaN when undefined).
        p_value: its two-sided p-value (1.0 when every difference is zero, NaN below 2 images).
        better: ``"a"``, ``"b"`` (which is better, by the metric's direction, when
            ``p_value < alpha``) or ``None`` (no significant difference).
        alpha: the significance level used for ``better``.

    Example:
        >>> test = xt.paired_test(result_a, result_b)
        >>> test.p_value, test.better
    """

    metric: str
    n: int
    mean_difference: float
    ci: tuple[float, float]
    statistic: float
    p_value: float
    better: str | None
    alpha: float

    def __str__(self) -> str:
        verdict = {None: "no significant difference", "a": "a is better", "b": "b is better"}[self.better]
        low, high = self.ci
        return (
            f"{self.metric}: mean(a − b) = {self.mean_difference:.4g} "
            f"[{low:.4g}, {high:.4g}], Wilcoxon p = {self.p_value:.3g} (n = {self.n}): {verdict}"
        )


def paired_test(a: Any, b: Any, *, alpha: float = 0.05, higher_is_better: bool | None = None) -> PairedTest:
    """Whether two methods differ on the same images: a two-sided Wilcoxon signed-rank test.

    ``a`` and ``b`` are the :class:`~xai_toolbox.MetricResult` of one metric for two methods
    on the same images (or their per-image score arrays, with ``higher_is_better`` given).
    Images where either score is NaN are left out. The Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``, zero differences dropped, exact p-values for small samples)
    makes no assumption on the scores' distribution; the interval of the mean difference is a
    percentile bootstrap over the images, resampling the pairs together.

    Args:
        a, b: the two results (or score arrays), one score per image, same images in the same order.
        alpha: significance level for :attr:`PairedTest.better`.
        higher_is_better: the metric's direction; read from the results when they carry it.

    Raises:
        ValueError: the two results cover different numbers of images or different metrics.

    Example:
        >>> xt.paired_test(table.results["rise"]["deletion"], table.results["saliency"]["deletion"])
        PairedTest(metric='deletion', n=8, mean_difference=-0.04, ..., better='a', ...)
    """
    from scipy.stats import wilcoxon

    name_a, name_b = getattr(a, "name", None), getattr(b, "name", None)
    if name_a is not None and name_b is not None and name_a != name_b:
        raise ValueError(f"paired_test compares one metric for two methods, got {name_a!r} and {name_b!r}")
    if higher_is_better is None:
        higher_is_better = getattr(a, "higher_is_better", None)
    if higher_is_better is None:
        raise ValueError("paired_test on score arrays needs higher_is_better=True or False")
    sa = np.asarray(getattr(a, "scores", a), dtype=np.float64).reshape(-1)
    sb = np.asarray(getattr(b, "scores", b), dtype=np.float64).reshape(-1)
    if sa.shape != sb.shape:
        raise ValueError(f"paired_test needs scores of the same images: got {sa.size} and {sb.size} scores")
    both = ~(np.isnan(sa) | np.isnan(sb))
    diff = sa[both] - sb[both]
    n = int(diff.size)
    mean = float(diff.mean()) if n else float("nan")
    if n < 2:
        statistic = p_value = float("nan")
    elif np.all(diff == 0):
        statistic, p_value = float("nan"), 1.0
    else:
        res = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    better = None
    if math.isfinite(p_value) and p_value < alpha and mean != 0:
        better = "a" if (mean > 0) == bool(higher_is_better) else "b"
    return PairedTest(
        metric=str(name_a or name_b or ""), n=n, mean_difference=mean, ci=bootstrap_ci(diff),
        statistic=statistic, p_value=p_value, better=better, alpha=alpha,
    )


def format_interval(mean: float, low: float, high: float, fmt: Callable[[float], str] = "{:.4f}".format) -> str:
    """``"mean ± half-width"`` of the interval ``[low, high]`` (the mean alone when the
    interval is undefined, ``"n/a"`` without a finite mean), each number through ``fmt``.

    Example:
        >>> format_interval(0.5, 0.4, 0.62)
        '0.5000 ± 0.1100'
    """
    if not math.isfinite(mean):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt((high - low) / 2.0)}"
