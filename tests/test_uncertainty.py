"""Uncertainty of scores: bootstrap intervals, best marks that respect them, paired tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import xai_toolbox as xt
from xai_toolbox.base import MetricResult
from xai_toolbox.evaluation import EvaluationTable
from xai_toolbox.report import collect_scores, format_summary, group_metrics, render_report
from xai_toolbox.uncertainty import bootstrap_ci, not_beaten, paired_test


def reference_percentile_ci(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """The percentile bootstrap written out one resample at a time."""
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(resamples)]
    return tuple(np.quantile(means, [0.025, 0.975]))


def test_bootstrap_matches_reference_and_is_seeded() -> None:
    values = np.random.default_rng(1).normal(0.3, 0.1, 12)
    expected = reference_percentile_ci(values, 3000, seed=5)
    np.testing.assert_allclose(bootstrap_ci(values, resamples=3000, seed=5), expected, rtol=0, atol=1e-12)
    assert bootstrap_ci(values) == bootstrap_ci(values.copy())  # same scores, same interval
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values, seed=2)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    # The 95 % percentile interval of a mean is close to the normal one for a dozen values.
    half = 1.96 * values.std(ddof=0) / np.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(half, rel=0.2)


def test_bootstrap_edge_cases() -> None:
    assert all(np.isnan(bootstrap_ci([0.4])))  # one image: undefined
    assert all(np.isnan(bootstrap_ci([np.nan, 0.2, np.nan])))  # NaN scores are left out
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    with_nan = bootstrap_ci([0.1, np.nan, 0.3, 0.2])
    assert with_nan == bootstrap_ci([0.1, 0.3, 0.2])
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], confidence=1.5)


def test_large_samples_use_student_t() -> None:
    values = np.random.default_rng(2).random(5000)
    low, high = bootstrap_ci(values)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))


def test_metric_result_carries_the_interval() -> None:
    scores = np.array([0.1, 0.5, np.nan, 0.3, 0.2])
    result = MetricResult("deletion", scores, False, family="fidelity")
    assert result.ci == bootstrap_ci(scores) and result.n == 4
    assert result.half_width == pytest.approx((result.ci[1] - result.ci[0]) / 2)
    assert result.confidence_interval(0.5)[1] - result.confidence_interval(0.5)[0] < result.ci[1] - result.ci[0]
    assert "ci=[" in repr(result)
    result.scores = np.array([1.0, 1.0])  # the interval follows the scores
    assert result.ci == (1.0, 1.0)


def test_not_beaten_marks() -> None:
    # a beats c outright; a and b overlap: both marked.
    intervals = {"a": (0.5, 0.4, 0.6), "b": (0.45, 0.3, 0.55), "c": (0.1, 0.0, 0.2)}
    assert not_beaten(intervals, higher_is_better=True) == {"a", "b"}
    assert not_beaten(intervals, higher_is_better=False) == {"c"}
    # Without intervals (one image): the best means, ties all marked; NaN never.
    nan = float("nan")
    plain = {"a": (1.0, nan, nan), "b": (1.0, nan, nan), "c": (0.0, nan, nan), "d": (nan, nan, nan)}
    assert not_beaten(plain, higher_is_better=True) == {"a", "b"}
    assert not_beaten({}, higher_is_better=True) == set()


def test_paired_test_matches_scipy_and_reads_the_direction() -> None:
    rng = np.random.default_rng(3)
    b = rng.random(10)
    a = b - 0.1 - 0.02 * rng.random(10)  # a is lower on every image
    ra, rb = MetricResult("deletion", a, False), MetricResult("deletion", b, False)
    test = paired_test(ra, rb)
    assert test.p_value == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert test.n == 10 and test.mean_difference == pytest.approx((a - b).mean())
    assert test.better == "a"  # deletion: lower is better
    assert paired_test(MetricResult("insertion", a, True), MetricResult("insertion", b, True)).better == "b"
    assert test.ci[1] < 0
    assert "a is better" in str(test)
    # identical methods never differ; NaN images are dropped from both
    same = paired_test(ra, ra)
    assert same.p_value == 1.0 and same.better is None
    a_nan = a.copy()
    a_nan[0] = np.nan
    assert paired_test(a_nan, b, higher_is_better=False).n == 9


def test_paired_test_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="same images"):
        paired_test(np.zeros(3), np.zeros(4), higher_is_better=True)
    with pytest.raises(ValueError, match="one metric"):
        paired_test(MetricResult("deletion", np.zeros(2), False), MetricResult("insertion", np.zeros(2), True))
    with pytest.raises(ValueError, match="higher_is_better"):
        paired_test(np.zeros(3), np.ones(3))


def _noisy_table() -> EvaluationTable:
    rng = np.random.default_rng(4)
    # 8 images: "a" and "b" are indistinguishable, "c" is clearly worse (higher deletion).
    records = []
    for method, centre in (("a", 0.20), ("b", 0.21), ("c", 0.60)):
        for metric, hib, family in (("deletion", False, "fidelity"), ("complexity", False, "complexity")):
            result = MetricResult(metric, centre + 0.05 * rng.standard_normal(8), hib, family=family)
            records.append({"method": method, "metric": metric, "score": result.mean,
                            "higher_is_better": hib, "result": result})
    return EvaluationTable(records)


def test_table_marks_every_method_not_beaten_and_compares() -> None:
    table = _noisy_table()
    assert table.best("deletion") == {"a", "b"}
    mean, low, high = table.intervals("deletion")["c"]
    assert low < mean < high
    text = str(table)
    a_line = next(line for line in text.splitlines() if line.startswith("a "))
    assert "±" in a_line and a_line.count("*") == 2
    assert "*" not in next(line for line in text.splitlines() if line.startswith("c "))
    test = table.compare("a", "c", "deletion")
    assert test.better == "a" and test.p_value < 0.05
    assert table.compare("a", "b", "deletion").n == 8
    with pytest.raises(KeyError):
        table.compare("a", "zzz", "deletion")
    with pytest.raises(KeyError):
        table.best("zzz")
    assert xt.paired_test is paired_test


def test_summary_and_report_show_intervals_and_families() -> None:
    table = _noisy_table()
    scores = collect_scores(table)
    assert group_metrics(scores) == [("fidelity", ["deletion"]), ("complexity", ["complexity"])]
    lines = format_summary(scores).splitlines()
    by_method = {line.split()[1]: line for line in lines[2:5]}
    assert "±" in by_method["a"] and by_method["a"].count("*") == 2 and "*" not in by_method["c"]
    assert any(line.startswith("families: fidelity: deletion, complexity: complexity") for line in lines)
    rng = np.random.default_rng(0)
    page = render_report(images=rng.random((8, 8, 8, 3)), maps={"a": rng.random((8, 8, 8))}, results=table)
    assert '<th colspan="1">fidelity</th><th colspan="1">complexity</th>' in page
    assert page.count('class="best"') == 4  # a and b on both metrics
    assert "Wilcoxon p =" in page
