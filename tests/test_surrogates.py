"""LIME and KernelSHAP, and what the four methods over segments share (LIME, KernelSHAP,
Shapley Value Sampling, Feature Ablation): contract, twins, batch-size invariance, exact
recovery of additive models, NumPy references, toy Shapley values, parity with Captum."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from _shared import exact_shapley, relative_error

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.plugins.surrogates import (
    interpretable_distance,
    kernel_shap_design,
    kernel_weights,
    shapley_kernel,
)
from xai_toolbox.testing import as_numpy, check_method, cnn, linear_model, to_framework, twin_cnn

FAST = {
    "lime": {"nb_samples": 64, "grid_size": 4, "seed": 1},
    "kernel_shap": {"nb_samples": 64, "grid_size": 4, "seed": 1},
    "shapley_value_sampling": {"nb_samples": 3, "grid_size": 4, "seed": 1},
    "feature_ablation": {"grid_size": 4},
}
METHODS = list(FAST)


def method_class(name: str) -> type:
    return xt.api.get_registry().method(name).cls


# -- shared by the four methods ---------------------------------------------------------------
def test_registered_with_metadata() -> None:
    assert xt.Lime is method_class("lime") and xt.KernelShap is method_class("kernel_shap")
    assert xt.ShapleyValueSampling is method_class("shapley_value_sampling")
    assert xt.FeatureAblation is method_class("feature_ablation")
    assert xt.Lime.family == xt.KernelShap.family == "surrogate"
    assert xt.FeatureAblation.family == xt.ShapleyValueSampling.family == "perturbation"
    assert not xt.FeatureAblation.stochastic and xt.Lime.stochastic
    for name in METHODS:
        assert method_class(name).input_kinds == ("image", "series", "tabular")
    # passes per image at the defaults: an 8×8 grid, M = 64
    assert xt.Lime(None).passes_per_image() == 1000
    assert xt.KernelShap(None).passes_per_image() == 2 * 64 + 2048
    assert xt.ShapleyValueSampling(None).passes_per_image() == 25 * 63 + 2
    assert xt.FeatureAblation(None).passes_per_image() == 65
    assert xt.KernelShap(None, grid_size=3).passes_per_image() == 2**9  # every coalition


@pytest.mark.parametrize("name", METHODS)
def test_contract(name: str, pytestconfig: pytest.Config) -> None:
    check_method(method_class(name), FAST[name], frameworks=pytestconfig.frameworks)


@pytest.mark.parametrize("name", METHODS)
def test_twin_models_give_the_same_map(both: None, name: str) -> None:
    torch_model, keras_model = twin_cnn(seed=1)
    images = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    params = {**FAST[name], "batch_size": 16, "baseline": 0.2}
    a = as_numpy(xt.method(name, torch_model, **params)(to_framework(images, "torch"), [0, 3]))
    b = as_numpy(xt.method(name, keras_model, **params)(to_framework(images, "tf"), [0, 3]))
    assert relative_error(a, b) <= 1e-4


@pytest.mark.parametrize("name", METHODS)
def test_result_does_not_depend_on_batch_size_or_the_other_images(framework: str, name: str) -> None:
    net = cnn(framework, seed=2)
    images = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    batch = to_framework(images, framework)
    maps = [as_numpy(xt.method(name, net, **FAST[name], batch_size=bs)(batch, [1, 2, 0])) for bs in (1, 7, 64)]
    for other in maps[:2]:
        assert relative_error(other, maps[2]) <= 1e-5
    # input i draws from its own generator: with the first two inputs alone, their maps stay
    alone = as_numpy(xt.method(name, net, **FAST[name])(to_framework(images[:2], framework), [1, 2]))
    assert relative_error(alone, maps[2][:2]) <= 1e-5


ADDITIVE = {
    "lime": {"nb_samples": 120, "regressor": "linear"},
    "kernel_shap": {"nb_samples": 60},
    "shapley_value_sampling": {"nb_samples": 2},
    "feature_ablation": {},
}


@pytest.mark.parametrize("name", METHODS)
def test_a_linear_model_is_additive_in_the_segments_and_recovered_exactly(framework: str, name: str) -> None:
    """For f(x) = <w, x> + b every segment j adds c_j = Σ_{p ∈ j} w_p (x_p − baseline): LIME's
    unregularised fit, KernelSHAP, Shapley sampling and ablation all return c_j exactly."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    model = linear_model(framework, w, np.array([0.5, -1.0], np.float32))
    labels = xe.grid_labels((16, 16), 4)
    maps = as_numpy(xt.method(name, model, grid_size=4, baseline=0.25, **ADDITIVE[name])(to_framework(x, framework), [1, 0]))
    for i, target in enumerate([1, 0]):
        contribution = (w[target] * (x[i] - 0.25)).sum(axis=0)
        expected = np.zeros((16, 16))
        for j in range(16):
            expected[labels == j] = contribution[labels == j].sum()
        assert relative_error(maps[i], expected) <= 2e-4


@pytest.mark.parametrize("name", METHODS)
def test_tabular_rows_of_a_numpy_callable_one_segment_per_feature(name: str) -> None:
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(6, 2))
    x = rng.random((3, 6), dtype=np.float32)
    maps = xt.method(name, lambda b: b @ weights, baseline=0.5, **ADDITIVE[name])(x, [0, 1, 1])
    assert isinstance(maps, np.ndarray) and maps.shape == (3, 6)
    expected = weights[:, [0, 1, 1]].T * (x - 0.5)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)


# -- LIME ----------------------------------------------------------------------------------------
def test_lime_kernel_on_the_reference_example() -> None:
    """Half of the segments on: cosine distance 1 − sqrt(1/2) = 0.2929, weight ≈ 0.503."""
    z = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    d = interpretable_distance(z, "cosine")
    np.testing.assert_allclose(d, [1 - math.sqrt(0.5), 0.0, 1.0])
    assert kernel_weights(d, 0.25)[0] == pytest.approx(0.503, abs=1e-3)
    np.testing.assert_allclose(interpretable_distance(z, "euclidean"), [math.sqrt(2), 0, 2])


def nonlinear_model(weights: np.ndarray):
    def fn(batch: np.ndarray) -> np.ndarray:  # channels first (N, C, H, W), two outputs
        z = batch.reshape(len(batch), -1).astype(np.float64) @ weights
        return np.stack([np.tanh(z[:, 0]) + 0.1 * z[:, 1] ** 2, z[:, 0] * z[:, 1]], axis=1)

    return xt.NumpyModel(fn, channel_axis=1)


@pytest.mark.parametrize(
    ("params", "reference"),
    [
        ({}, "lime"),  # the lime package: cosine between coalitions, ridge(1)
        ({"distance_space": "input", "distance": "euclidean", "kernel_width": 3.0, "alpha": 0.1}, "input"),
    ],
)
def test_lime_matches_a_numpy_and_scikit_learn_reference(params: dict, reference: str) -> None:
    linear_model_module = pytest.importorskip("sklearn.linear_model")
    pairwise = pytest.importorskip("sklearn.metrics").pairwise_distances
    rng = np.random.default_rng(5)
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    model = nonlinear_model(rng.normal(size=(192, 2)) / 4)
    n, seed, baseline = 150, 7, 0.3
    maps = xt.Lime(model, nb_samples=n, grid_size=2, seed=seed, baseline=baseline, **params)(x, [0, 1])
    labels = xe.grid_labels((8, 8), 2)
    for i, target in enumerate([0, 1]):
        draw = np.random.default_rng(xe.item_seed(seed, i))  # the documented coalitions
        z = (draw.random((n, 4)) < 0.5).astype(int)
        z[0] = 1
        masks = z[:, labels]  # (n, 8, 8)
        perturbed = (x[i][None] * masks[:, None] + baseline * (1 - masks[:, None])).astype(np.float32)
        y = model(perturbed)[:, target].astype(np.float32)
        if reference == "lime":
            d = pairwise(z, np.ones((1, 4)), metric="cosine").ravel()
            w = np.sqrt(np.exp(-(d**2) / 0.25**2))
            fit = linear_model_module.Ridge(alpha=1.0).fit(z, y, sample_weight=w)
        else:
            d = np.linalg.norm((perturbed - x[i][None]).reshape(n, -1), axis=1)
            w = np.exp(-(d**2) / (2 * 3.0**2))
            fit = linear_model_module.Ridge(alpha=0.1).fit(z, y, sample_weight=w)
        assert relative_error(maps[i], fit.coef_[labels]) <= 1e-5


def test_lime_extras_and_the_uniform_weights_fallback() -> None:
    rng = np.random.default_rng(6)
    x = rng.random((2, 5), dtype=np.float32)
    weights = rng.normal(size=(5, 1))
    linear = lambda b: b @ weights + 0.5  # noqa: E731
    _, extras = xt.Lime(linear, nb_samples=200, regressor="linear", baseline=0.0).explain_with_extras(x, [0, 0])
    np.testing.assert_allclose(extras["intercept"], [0.5, 0.5], rtol=1e-5)  # f(∅)
    np.testing.assert_allclose(extras["r2"], [1.0, 1.0], rtol=1e-6)  # an exact fit
    model = lambda b: np.tanh(3 * b @ weights)  # noqa: E731
    _, extras = xt.Lime(model, nb_samples=200).explain_with_extras(x, [0, 0])
    assert extras["intercept"].shape == extras["r2"].shape == (2,)
    assert np.all((extras["r2"] > 0) & (extras["r2"] < 1))
    # an all-zero input: every cosine distance in input space is 1, every weight exp(−1/2w²)
    tiny = dict(distance_space="input", kernel_width=1e-3, nb_samples=50, baseline=1.0)
    zeros = np.zeros((1, 5), np.float32)
    with pytest.warns(RuntimeWarning, match="every kernel weight of input 0 is 0"):
        uniform = xt.Lime(model, **tiny)(zeros, [0])
    wide = xt.Lime(model, **{**tiny, "kernel_width": 1e9})(zeros, [0])  # every weight 1
    np.testing.assert_allclose(uniform, wide, rtol=1e-6)
    assert np.abs(uniform).max() > 0.01


# -- KernelSHAP ----------------------------------------------------------------------------------
def test_kernel_weights_enumeration_and_the_sampled_size_distribution() -> None:
    """M = 4: π(1) = 0.25, π(2) = 0.125, π(3) = 0.25; sampled sizes p(k) ∝ (1, 0.75, 1)."""
    np.testing.assert_allclose(shapley_kernel(4, np.array([1, 2, 3])), [0.25, 0.125, 0.25])
    z, w = kernel_shap_design(np.random.default_rng(0), 4, 16)  # 2^4 fits: every coalition
    assert sorted(map(tuple, z)) == sorted(itertools.product((0, 1), repeat=4))
    assert z[0].all() and not z[1].any()
    np.testing.assert_allclose(w[2:], shapley_kernel(4, z[2:].sum(axis=1)))
    rng = np.random.default_rng(1)
    sampled = np.concatenate([kernel_shap_design(rng, 4, 12, paired=False)[0][2:] for _ in range(3000)])
    z, w = kernel_shap_design(rng, 4, 13)  # paired: each draw, then its complement
    assert len(z) == 13 and z[0].all() and not z[1].any() and np.all(w == 1)
    np.testing.assert_array_equal(z[3:13:2], 1 - z[2:12:2])
    p = np.array([1, 0.75, 1]) / 2.75
    freq = np.bincount(sampled.sum(axis=1), minlength=5)[1:4] / len(sampled)
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / len(sampled))), freq
    singles = sampled[sampled.sum(axis=1) == 1].mean(axis=0)  # uniform subsets of a size
    assert np.all(np.abs(singles - 0.25) <= 4 * np.sqrt(0.25 * 0.75 / (sampled.sum(axis=1) == 1).sum()))


def test_kernel_shap_is_exact_when_every_coalition_fits_the_budget() -> None:
    rng = np.random.default_rng(7)
    x = rng.random((2, 5), dtype=np.float32)
    weights = rng.normal(size=(5, 3))

    def model(b: np.ndarray) -> np.ndarray:
        h = b.astype(np.float64) @ weights
        return np.stack([h[:, 0] * h[:, 1], np.tanh(h[:, 2])], axis=1)

    maps, extras = xt.KernelShap(model, nb_samples=40, baseline=0.2).explain_with_extras(x, [0, 1])
    for i, target in enumerate([0, 1]):
        f = lambda z, i=i, target=target: model(np.where(z == 1, x[i], 0.2)[None].astype(np.float32))[0, target]  # noqa: E731
        np.testing.assert_allclose(maps[i], exact_shapley(f, 5), rtol=1e-5, atol=1e-6)
        assert extras["base_value"][i] == pytest.approx(f(np.zeros(5)), rel=1e-6)


def test_kernel_shap_toy_product_and_efficiency_when_sampling() -> None:
    maps = xt.KernelShap(lambda b: b[:, :1] * b[:, 1:2], nb_samples=10)(np.ones((1, 2), np.float32), [0])
    np.testing.assert_allclose(maps, [[0.5, 0.5]])  # (f(11) − f(00)) / 2 each
    rng = np.random.default_rng(8)
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    model = nonlinear_model(rng.normal(size=(192, 2)) / 4)
    maps, extras = xt.KernelShap(model, grid_size=4, nb_samples=50, seed=3).explain_with_extras(x, [0, 1])
    full = model(x)[np.arange(2), [0, 1]]
    cell_sums = maps.reshape(2, 4, 2, 4, 2)[:, :, 0, :, 0].sum(axis=(1, 2))  # one value per cell
    np.testing.assert_allclose(cell_sums, full - extras["base_value"], rtol=1e-4, atol=1e-5)


# -- parity with Captum --------------------------------------------------------------------------
def _coalitions(z: np.ndarray, torch):
    def generate(*_args, **_kwargs):
        for row in z:
            yield torch.from_numpy(row.astype(np.int64))[None]

    return generate


@pytest.fixture
def captum_setting(torch):
    pytest.importorskip("captum")
    net = torch.nn.Sequential(cnn("torch", seed=2), torch.nn.Identity())
    net[1] = _Scale(torch, 40.0)  # logits of a few units, so Lasso(0.01) keeps coefficients
    images = torch.from_numpy(np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32))
    labels = xe.grid_labels((16, 16), 4)
    return net, images, [0, 1, 3], torch.from_numpy(labels)[None, None], labels


def _Scale(torch, factor: float):
    class Scale(torch.nn.Module):
        def forward(self, x):
            return x * factor

    return Scale()


LIME_CASES = {
    # (our parameters, Captum's similarity and linear model)
    "lime_package": ({}, "interpretable", ("linear_model.Ridge", {"alpha": 1.0})),
    "captum_default": ({"distance_space": "input", "kernel_width": 1.0, "regressor": "lasso", "alpha": 0.01},
                       "captum", ("linear_model.Lasso", {"alpha": 0.01})),
    "linear": ({"regressor": "linear"}, "interpretable", ("linear_model.LinearRegression", {})),
}


@pytest.mark.parametrize("case", list(LIME_CASES))
def test_lime_parity_with_captum(torch, captum_setting, case: str) -> None:
    from captum._utils.models.linear_model import SkLearnLinearModel
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    from xai_toolbox.plugins.surrogates import item_generators, lime_coalitions

    net, images, targets, feature_mask, _ = captum_setting
    params, similarity, (trainer, kwargs) = LIME_CASES[case]
    n = 120
    ours = as_numpy(xt.Lime(net, nb_samples=n, grid_size=4, baseline=0.3, seed=4, batch_size=13, **params)(images, targets))
    assert np.abs(ours).max() > 0
    rngs = item_generators(4, 3)
    for i in range(3):
        z = lime_coalitions(rngs[i], 16, n)
        if similarity == "captum":
            kernel = get_exp_kernel_similarity_function("cosine", 1.0)
        else:
            def kernel(_x, _p, interpretable, **_kw):
                return float(kernel_weights(interpretable_distance(interpretable.numpy(), "cosine"), 0.25)[0])
        peer = Lime(net, interpretable_model=SkLearnLinearModel(trainer, **kwargs), similarity_func=kernel,
                    perturb_func=_coalitions(z, torch))
        theirs = peer.attribute(images[i : i + 1], baselines=0.3, target=targets[i], feature_mask=feature_mask,
                                n_samples=n, perturbations_per_eval=16)
        assert relative_error(ours[i], theirs[0, 0].numpy()) <= 1e-5  # measured ≤ 1.2e-6


def test_kernel_shap_parity_with_captum(torch, captum_setting) -> None:
    """Captum weighs the full and empty coalitions 1e6 instead of imposing the constraint: its
    result tends to ours as that weight grows (until its float32 regression's precision)."""
    from captum.attr import KernelShap

    from xai_toolbox.plugins.surrogates import item_generators

    net, images, targets, feature_mask, _ = captum_setting
    n = 100
    ours = as_numpy(xt.KernelShap(net, nb_samples=n, grid_size=4, baseline=0.3, seed=4, batch_size=13)(images, targets))
    rngs = item_generators(4, 3)
    for i in range(3):
        z, _ = kernel_shap_design(rngs[i], 16, n)
        errors = {}
        for weight in (1e6, 1e9):
            peer = KernelShap(net)
            peer.perturb_func, peer.inf_weight = _coalitions(z, torch), weight
            theirs = peer.attribute(images[i : i + 1], baselines=0.3, target=targets[i], feature_mask=feature_mask,
                                    n_samples=n, perturbations_per_eval=16)
            errors[weight] = relative_error(ours[i], theirs[0, 0].numpy())
        assert errors[1e9] <= 1e-5  # measured ≤ 1.1e-6
        assert errors[1e6] <= 1e-4  # measured ≤ 1.6e-5: the 1e6 weight's own error
