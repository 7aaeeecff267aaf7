"""Adaptive sampling (``nb_samples="auto"``): checkpoints and rounds, the standard errors each
method stops on (against their empirical spread), adaptive = fixed at the count it stopped at,
batch-size invariance, the control-variate RISE estimator, and parameter errors up front."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.plugins.hsic import hsic_design, hsic_with_error
from xai_toolbox.plugins.rise import MaskMoments
from xai_toolbox.testing import as_numpy, check_method, cnn, to_framework, twin_cnn

IMAGES = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
TARGETS = [0, 3, 1]


def linear_numpy_model(w: np.ndarray, bias: float = 0.0) -> xt.NumpyModel:
    """``f(z) = <w, z> + bias`` on channels-first NumPy images (one output)."""
    flat = w.reshape(-1, 1).astype(np.float64)
    return xt.NumpyModel(lambda b: b.reshape(len(b), -1).astype(np.float64) @ flat + bias, channel_axis=1)


# -- the schedule ---------------------------------------------------------------------------------
def test_checkpoints_are_powers_of_two_and_one_and_a_half_times_them() -> None:
    assert xe.checkpoints(256, 2000) == [256, 384, 512, 768, 1024, 1536, 2000]
    assert xe.checkpoints(64, 256) == [64, 96, 128, 192, 256]
    assert xe.checkpoints(8, 128, doubling=True) == [8, 16, 32, 64, 128]
    assert xe.checkpoints(300, 300) == [300]


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_rounds_stop_each_item_at_its_checkpoint_whatever_the_batch_size(batch_size: int) -> None:
    schedule = xe.sample_schedule(
        "nb_samples", "auto", tolerance=0.5, max_samples=None, first=4, default_tolerance=0.1, default_maximum=24
    )
    assert schedule.checkpoints == [4, 6, 8, 12, 16, 24]
    stop_at = {0: 6, 1: 4, 2: 24, 3: 12}                  # the checkpoint where each item gets precise
    seen: dict[int, list[int]] = {i: [] for i in stop_at}

    def sample_round(round_: xe.SampleRound) -> None:
        for chunk in round_.chunks:
            assert chunk.size <= batch_size
            for item, sample in zip(chunk.items, chunk.samples, strict=True):
                seen[int(item)].append(int(sample))

    def error(active: np.ndarray, n: int) -> np.ndarray:
        return np.array([0.1 if n >= stop_at[int(i)] else 1.0 for i in active])

    used = schedule.run(4, batch_size, sample_round, error)
    assert used.tolist() == [6, 4, 24, 12]
    for item, samples in seen.items():
        assert samples == list(range(stop_at[item]))      # each sample once, in order


def test_a_nan_error_keeps_sampling_and_a_fixed_schedule_is_one_round() -> None:
    schedule = xe.sample_schedule(
        "n", "auto", tolerance=0.1, max_samples=16, first=4, default_tolerance=0.1, default_maximum=99
    )
    used = schedule.run(2, 8, lambda r: None, lambda active, n: np.array([np.nan, 0.0])[active])
    assert used.tolist() == [16, 4]
    rounds: list[tuple[int, int]] = []
    fixed = xe.sample_schedule("n", 10, tolerance=None, max_samples=None, first=4, default_tolerance=0.1,
                               default_maximum=99)
    assert fixed.run(3, 4, lambda r: rounds.append((r.lo, r.hi)), lambda a, n: 1 / 0).tolist() == [10] * 3
    assert rounds == [(0, 10)]


@pytest.mark.parametrize(
    ("value", "extra", "message"),
    [
        ("sometimes", {}, "positive integer or 'auto'"),
        (100, {"tolerance": 0.1}, "only apply to nb_samples='auto'"),
        (100, {"max_samples": 500}, "only apply"),
        ("auto", {"tolerance": 0.0}, "tolerance"),
        ("auto", {"max_samples": 100}, "at least 256"),
    ],
)
def test_bad_sampling_parameters_fail_before_any_model_call(value: object, extra: dict, message: str) -> None:
    def never(_: np.ndarray) -> np.ndarray:
        raise AssertionError("the model was called")

    with pytest.raises(xt.ParameterError, match=message):
        xt.Rise(xt.NumpyModel(never, channel_axis=1), nb_samples=value, **extra)


def test_sobol_auto_takes_a_power_of_two_maximum() -> None:
    with pytest.raises(xt.ParameterError, match="max_design must be a power of two"):
        xt.SobolAttribution(lambda b: b, nb_design="auto", max_design=100)
    with pytest.raises(xt.ParameterError, match="only apply to nb_design='auto'"):
        xt.HsicAttribution(lambda b: b, nb_design=100, max_design=512)


def test_passes_per_image_is_the_maximum_and_the_workload_check_counts_it() -> None:
    assert xt.Rise(None, nb_samples="auto").passes_per_image() == 8192
    assert xt.Rise(None, nb_samples="auto", max_samples=1000).passes_per_image() == 1000
    assert xt.SobolAttribution(None, nb_design="auto", grid_size=4).passes_per_image() == 128 * 17
    assert xt.HsicAttribution(None, nb_design="auto").passes_per_image() == 4096
    with pytest.raises(xt.WorkloadError):
        xt.Rise(None, nb_samples="auto", max_samples=10**12).check_workload((8, 3, 224, 224))


# -- standard errors against their empirical spread ---------------------------------------------
def test_relative_error_is_the_rms_error_over_the_spread() -> None:
    est = ep.astensor(np.array([[1.0, 3.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]]))
    se = ep.astensor(np.array([[0.3, 0.4, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(xe.relative_error(est, se), [0.25, 0.0, np.inf])


def test_correlation_standard_error_matches_the_spread_of_correlations() -> None:
    rng = np.random.default_rng(0)
    n, reps = 200, 3000
    a = rng.standard_exponential((reps, n))                 # skewed: no normal theory
    b = 0.6 * a + rng.standard_normal((reps, n))
    r = np.array([np.corrcoef(u, v)[0, 1] for u, v in zip(a, b, strict=True)])
    se = xe.correlation_standard_error(a, b)
    assert abs(np.median(se) / r.std() - 1) < 0.1
    assert xe.correlation_standard_error(np.ones((1, 5)), np.arange(5.0)[None])[0] == 0.0


@pytest.mark.parametrize("normalization", ["expectation", "control_variate", "mask_sum"])
def test_rise_standard_errors_match_the_spread_of_maps(normalization: str) -> None:
    """Scores of a noisy linear model of random masks with a large offset (float32 sums of
    squares must not cancel): the mean standard error of each position matches the spread of
    the estimate over 400 draws (the offset's share, common to every position, left out for
    the centred estimators)."""
    rng = np.random.default_rng(1)
    n, positions, p, reps = 300, 12, 0.5, 400
    w = rng.normal(size=positions)
    moments = MaskMoments(normalization, with_errors=True)
    maps, errors = [], []
    for _ in range(reps):
        masks = (rng.random((n, positions)) < p).astype(np.float32)
        scores = (masks @ w + 0.5 * rng.standard_normal(n) + 40.0).astype(np.float32)
        shift = np.float32(40.3)                          # a clean score near the scores' mean
        weights = moments.weights(ep.astensor(scores - shift))
        sums = moments.sums(weights, ep.astensor(masks))[None]
        totals = weights.sum(axis=1)[None]
        est, se = moments.estimate(sums, totals, n, p, shift, errors=True)
        maps.append(est.numpy()[0])
        errors.append(se.numpy()[0])
    maps, errors = np.array(maps, np.float64), np.array(errors, np.float64)
    if normalization != "expectation":
        maps = maps - maps.mean(axis=1, keepdims=True)
    empirical = maps.std(axis=0)
    ratio = errors.mean(axis=0) / empirical
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio


def test_the_control_variate_estimate_is_unbiased_and_far_less_noisy_than_the_papers() -> None:
    """Same masks and scores: both are unbiased for E[f M(λ)] / p (exact on average over 2000
    draws of 20 masks), the control variate with a fraction of the spread when the mean score
    is large."""
    rng = np.random.default_rng(2)
    n, positions, p, reps = 20, 6, 0.5, 2000
    w = np.linspace(-1, 1, positions)
    truth = (p * w + p * p * (w.sum() - w) + 10.0 * p) / p  # E[f M] / p for f = w·M + 10
    got = {norm: [] for norm in ("expectation", "control_variate")}
    for _ in range(reps):
        masks = (rng.random((n, positions)) < p).astype(np.float32)
        scores = (masks @ w + 10.0).astype(np.float32)
        for norm, found in got.items():
            moments = MaskMoments(norm, with_errors=False)
            weights = moments.weights(ep.astensor(scores))
            est, _ = moments.estimate(moments.sums(weights, ep.astensor(masks))[None], weights.sum(axis=1)[None], n, p)
            found.append(est.numpy()[0])
    for norm, found in got.items():
        values = np.array(found, np.float64)
        assert np.abs(values.mean(axis=0) - truth).max() < 4 * values.std(axis=0).max() / np.sqrt(reps), norm
    assert np.array(got["control_variate"]).std(axis=0).max() < 0.3 * np.array(got["expectation"]).std(axis=0).min()


def test_rise_defaults_to_the_control_variate_and_one_mask_gives_the_papers_estimate() -> None:
    model = xt.NumpyModel(lambda b: b.reshape(len(b), -1).sum(axis=1, keepdims=True) ** 2, channel_axis=1)
    assert xt.Rise(model).normalization == "control_variate"
    x = IMAGES[:2]
    kwargs = {"grid_size": 4, "seed": 5, "batch_size": 7}
    default = xt.Rise(model, nb_samples=40, **kwargs)(x, [0, 0])
    np.testing.assert_array_equal(default, xt.Rise(model, nb_samples=40, normalization="control_variate", **kwargs)(x, [0, 0]))
    assert not np.allclose(default, xt.Rise(model, nb_samples=40, normalization="expectation", **kwargs)(x, [0, 0]))
    np.testing.assert_allclose(
        xt.Rise(model, nb_samples=1, **kwargs)(x, [0, 0]),
        xt.Rise(model, nb_samples=1, normalization="expectation", **kwargs)(x, [0, 0]), rtol=1e-6,
    )


def test_hsic_standard_error_matches_the_spread_of_scores() -> None:
    rng = np.random.default_rng(3)
    n, d, reps = 256, 6, 300
    w = np.array([2.0, 1.0, 0.5, 0.0, 0.0, -1.0])
    scores, errors = [], []
    for r in range(reps):
        design = hsic_design(n, d, "lhs", seed=r).astype(np.float64)
        y = design @ w + 0.3 * rng.standard_normal(n)
        z = design - design.mean(axis=0)
        value, se = hsic_with_error(z, y, float(np.median(np.abs(y[:, None] - y[None]))))
        scores.append(value)
        errors.append(se)
    ratio = np.mean(errors, axis=0)[:3] / np.std(scores, axis=0)[:3]  # cells the score depends on
    assert np.all((ratio > 0.75) & (ratio < 1.35)), ratio


# -- adaptive = fixed at the count where it stopped ---------------------------------------------------
AUTO = {
    "rise": ({"nb_samples": "auto", "tolerance": 0.19, "max_samples": 2048, "grid_size": 4,
              "normalization": "control_variate", "seed": 2}, "nb_samples"),
    "sobol": ({"nb_design": "auto", "tolerance": 0.2, "max_design": 128, "grid_size": 3}, "nb_design"),
    "hsic": ({"nb_design": "auto", "tolerance": 0.25, "max_design": 1024, "grid_size": 3, "seed": 1}, "nb_design"),
}


@pytest.mark.parametrize("name", list(AUTO))
def test_adaptive_map_is_the_fixed_map_at_the_count_it_stopped_at(name: str) -> None:
    w = np.random.default_rng(4).normal(size=(3, 16, 16)).astype(np.float32)
    model = linear_numpy_model(w, bias=3.0)
    params, count = AUTO[name]
    maps, extras = xt.method(name, model, **params, batch_size=50).explain_with_extras(IMAGES, [0, 0, 0])
    used = extras[count]
    maximum = params.get("max_samples", params.get("max_design"))
    assert used.min() < maximum                        # it did stop early somewhere
    fixed = {k: v for k, v in params.items() if k not in ("tolerance", "max_samples", "max_design")}
    for i, n in enumerate(used):
        alone = xt.method(name, model, **{**fixed, count: int(n)}, batch_size=64)(IMAGES[i : i + 1], [0])
        np.testing.assert_allclose(alone[0], maps[i], rtol=1e-4, atol=1e-6 * np.abs(maps[i]).max())
    again, extras_again = xt.method(name, model, **params, batch_size=7).explain_with_extras(IMAGES, [0, 0, 0])
    np.testing.assert_array_equal(extras_again[count], used)
    np.testing.assert_allclose(again, maps, rtol=1e-4, atol=1e-6 * np.abs(maps).max())


def test_sobol_stops_where_its_indices_stop_moving() -> None:
    """The documented rule, from fixed results: the first design size N at which the indices
    moved by at most ``tolerance`` times their spread (RMS) since N/2. Tabular rows: one cell
    per feature, so the results are the indices themselves."""
    w = np.array([1.5, -1.0, 0.5, 0.25, 0.0, 2.0])
    model = xt.NumpyModel(lambda b: np.tanh(b @ w[:, None]) + 0.3 * np.sin(3 * b[:, :1] * b[:, 1:2]))
    row = np.random.default_rng(5).random((1, 6), dtype=np.float32) + 0.5
    tol = 0.05
    got, extras = xt.SobolAttribution(model, nb_design="auto", tolerance=tol).explain_with_extras(row, [0])
    fixed = {n: xt.SobolAttribution(model, nb_design=n)(row, [0])[0] for n in (8, 16, 32, 64, 128)}
    moved = {n: np.sqrt(((fixed[n] - fixed[n // 2]) ** 2).mean()) / fixed[n].std() for n in (16, 32, 64, 128)}
    expected = next((n for n in (16, 32, 64) if moved[n] <= tol), 128)
    assert all(abs(m - tol) > 0.005 for m in moved.values()), moved  # no tie to round either way
    assert extras["nb_design"][0] == expected
    np.testing.assert_allclose(got[0], fixed[expected], rtol=1e-5, atol=1e-7)


def test_mufidelity_auto_is_the_fixed_score_at_the_count_it_stopped_at() -> None:
    w = np.random.default_rng(6).normal(size=(3, 16, 16)).astype(np.float32)
    model = linear_numpy_model(w)
    maps = (IMAGES * w).sum(axis=1) + np.random.default_rng(7).normal(0, 2.0, (3, 16, 16))
    result = xt.MuFidelity(model, nb_samples="auto", tolerance=0.06, batch_size=30)(IMAGES, [0, 0, 0], maps)
    used = result.details["nb_samples"]
    assert used.min() < 2048 and np.all(result.details["standard_errors"][used < 2048] <= 0.06)
    for i, n in enumerate(used):
        fixed = xt.MuFidelity(model, nb_samples=int(n))(IMAGES[i : i + 1], [0], maps[i : i + 1])
        assert fixed.scores[0] == pytest.approx(result.scores[i], abs=1e-9)
        np.testing.assert_allclose(result.details["drops"][i, :n], fixed.details["drops"][0], atol=1e-9)
        assert np.all(np.isnan(result.details["drops"][i, n:]))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(AUTO))
def test_auto_contract_and_twins(name: str, pytestconfig: pytest.Config) -> None:
    """The method contract with ``"auto"`` (batch_size 1 and larger, repeatable, seeds, model
    left as it was) and the same maps for twin PyTorch and Keras models."""
    params, _ = AUTO[name]
    small = {**params, "max_samples" if "max_samples" in params else "max_design": 256 if name != "sobol" else 16}
    check_method(xt.api.get_registry().method(name).cls, small, frameworks=pytestconfig.frameworks)


def test_auto_rise_is_the_fixed_map_on_framework_models(framework: str) -> None:
    model = cnn(framework, 0)
    x = to_framework(IMAGES[:2], framework)
    rise = xt.Rise(model, nb_samples="auto", tolerance=0.5, max_samples=384, grid_size=4, batch_size=128)
    maps, extras = rise.explain_with_extras(x, TARGETS[:2])
    maps = as_numpy(maps)
    for i, n in enumerate(extras["nb_samples"]):
        fixed = as_numpy(xt.Rise(model, nb_samples=int(n), grid_size=4, batch_size=128)(x[i : i + 1], TARGETS[i : i + 1]))
        np.testing.assert_allclose(fixed[0], maps[i], rtol=1e-4, atol=1e-5 * np.abs(maps[i]).max())


def test_twin_models_stop_at_the_same_counts_with_the_same_maps(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=1)
    params = {"nb_samples": "auto", "tolerance": 0.5, "max_samples": 768, "grid_size": 4, "batch_size": 128}
    a, ea = xt.Rise(torch_model, **params).explain_with_extras(to_framework(IMAGES, "torch"), TARGETS)
    b, eb = xt.Rise(keras_model, **params).explain_with_extras(to_framework(IMAGES, "tf"), TARGETS)
    np.testing.assert_array_equal(ea["nb_samples"], eb["nb_samples"])
    a, b = as_numpy(a), as_numpy(b)
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())
