"""GradientSHAP / Expected Gradients: exact on linear and product models given the draws,
completeness, twins, batch-size invariance, Captum parity with the same draws."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.plugins.gradient_shap import draws
from xai_toolbox.testing import as_numpy, check_method, cnn, linear_model, to_framework, twin_cnn


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def _layout(a: np.ndarray, framework: str) -> np.ndarray:
    """Channels-first NumPy images in the framework's layout."""
    return a if framework == "torch" else np.ascontiguousarray(np.moveaxis(a, -3, -1))


def test_linear_model_is_exact_and_complete(framework: str) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    x = rng.random((2, 3, 6, 5), dtype=np.float32)
    refs = rng.random((7, 3, 6, 5), dtype=np.float32)
    model = linear_model(framework, w, bias)
    method = xt.GradientSHAP(model, nb_samples=9, baselines=_layout(refs, framework), batch_size=4)
    maps, extras = method.explain_with_extras(to_framework(x, framework), [2, 0])
    maps, indices = as_numpy(maps), extras["baseline_indices"]
    assert indices.shape == extras["alphas"].shape == (2, 9)
    for i, target in enumerate((2, 0)):
        drawn = refs[indices[i]].mean(axis=0)
        np.testing.assert_allclose(maps[i], (w[target] * (x[i] - drawn)).sum(axis=0), rtol=1e-4, atol=1e-5)
        # completeness: the map sums to f(x) − mean f(x') over the drawn references
        scores = (w[target] * np.concatenate([x[i : i + 1], refs[indices[i]]])).sum(axis=(1, 2, 3)) + bias[target]
        expected = scores[0] - scores[1:].mean()
        np.testing.assert_allclose(maps[i].sum(), expected, rtol=1e-4, atol=1e-4)


def _product(framework: str) -> Any:
    """``f(x) = x₁ x₂`` on rows of two features."""
    if framework == "torch":
        import torch

        class Product(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return (x[:, 0] * x[:, 1])[:, None]

        return Product()
    import keras

    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Lambda(lambda x: (x[:, 0] * x[:, 1])[:, None])(inputs))


def test_product_model_gives_the_mean_alpha(framework: str) -> None:
    # x = (1, 1), baseline 0: each draw attributes (α, α), so the map is the mean α twice and
    # sums to f(x) − f(0) = 1 in expectation.
    x = np.ones((1, 2), np.float32)
    maps, extras = xt.GradientSHAP(_product(framework), nb_samples=500, seed=1).explain_with_extras(x, [0])
    alpha = extras["alphas"][0].astype(np.float64).mean()
    np.testing.assert_allclose(as_numpy(maps)[0], [alpha, alpha], rtol=1e-5)
    assert abs(alpha - 0.5) < 5 * np.sqrt(1 / 12 / 500)
    grads = as_numpy(xt.GradientSHAP(_product(framework), nb_samples=500, seed=1, multiply_by_inputs=False)(x, [0]))
    np.testing.assert_allclose(grads[0], [alpha, alpha], rtol=1e-5)  # ∂f/∂x at αx is α as well


def test_draws_are_per_image_and_seeded(framework: str) -> None:
    net = cnn(framework)
    images = _images(3)
    batch = to_framework(images, framework)
    refs = _layout(_images(5, seed=9), framework)
    params = {"nb_samples": 6, "baselines": refs, "seed": 4}
    a, extras = xt.GradientSHAP(net, batch_size=64, **params).explain_with_extras(batch, [0, 1, 2])
    b = xt.GradientSHAP(net, batch_size=4, **params)(batch, [0, 1, 2])
    np.testing.assert_allclose(as_numpy(a), as_numpy(b), rtol=1e-5, atol=1e-7)
    for item in range(3):
        indices, alphas = draws(4, item, 6, 5)
        np.testing.assert_array_equal(extras["baseline_indices"][item], indices)
        np.testing.assert_array_equal(extras["alphas"][item], alphas)
    c = as_numpy(xt.GradientSHAP(net, batch_size=4, **{**params, "seed": 5})(batch, [0, 1, 2]))
    assert np.abs(c - as_numpy(a)).max() > 1e-4
    noisy = xt.GradientSHAP(net, noise=0.1, **params)
    np.testing.assert_allclose(
        as_numpy(noisy(batch, [0, 1, 2])),
        as_numpy(xt.GradientSHAP(net, noise=0.1, batch_size=5, **params)(batch, [0, 1, 2])), rtol=1e-5, atol=1e-7,
    )
    assert np.abs(as_numpy(noisy(batch, [0, 1, 2])) - as_numpy(a)).max() > 1e-4


def test_twins_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=1)
    images, refs, targets = _images(4), _images(6, seed=3), np.array([0, 1, 2, 3])
    params = {"nb_samples": 8, "seed": 2, "noise": 0.05, "batch_size": 5}
    a = as_numpy(xt.GradientSHAP(torch_model, baselines=refs, **params)(to_framework(images, "torch"), targets))
    b = as_numpy(xt.GradientSHAP(keras_model, baselines=_layout(refs, "tf"), **params)(to_framework(images, "tf"), targets))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_contract(pytestconfig: pytest.Config) -> None:
    check_method(xt.GradientSHAP, {"nb_samples": 8, "seed": 1}, frameworks=pytestconfig.frameworks)


def test_bad_parameters_fail_before_any_model_call(torch: Any) -> None:
    calls: list[int] = []

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = cnn("torch")

        def forward(self, x: Any) -> Any:
            calls.append(len(x))
            return self.net(x)

    batch = torch.from_numpy(_images(2))
    for baselines in (np.zeros((2, 3, 8, 8), np.float32), np.zeros((3, 16, 16, 3), np.float32), np.full((3, 16, 16), np.nan, np.float32)):
        with pytest.raises(xt.ParameterError, match="baselines"):
            xt.GradientSHAP(Counting(), baselines=baselines)(batch, [0, 1])
    assert not calls
    for params, match in (({"nb_samples": 0}, "nb_samples"), ({"noise": -1.0}, "noise"), ({"baselines": None}, "baselines"),
                          ({"multiply_by_inputs": "yes"}, "multiply_by_inputs"), ({"noise_scale": "std"}, "noise_scale")):
        with pytest.raises(xt.ParameterError, match=match):
            xt.GradientSHAP(None, **params)
    assert xt.GradientSHAP(None).passes_per_image() == 200


def test_parity_with_captum(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Captum draws the reference indices (np.random.choice) and the alphas (np.random.uniform)
    # for all inputs at once, each input's samples together: it is given our draws.
    captum = pytest.importorskip("captum.attr")
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
    cases = [(cnn("torch", seed=6), [0, 2, 3]), (linear_model("torch", w), [1, 0, 2])]
    images = torch.from_numpy(_images(3, seed=7))
    refs = torch.from_numpy(_images(10, seed=8))
    n = 7
    for model, targets in cases:
        maps, extras = xt.GradientSHAP(model, nb_samples=n, baselines=refs, seed=2).explain_with_extras(images, targets)
        indices, alphas = extras["baseline_indices"].reshape(-1), extras["alphas"].reshape(-1).astype(np.float64)
        monkeypatch.setattr(np.random, "choice", lambda *a, indices=indices, **k: indices)
        monkeypatch.setattr(np.random, "uniform", lambda *a, alphas=alphas, **k: alphas)
        theirs = captum.GradientShap(model).attribute(images, baselines=refs, n_samples=n, stdevs=0.0, target=targets)
        theirs = theirs.detach().numpy().sum(axis=1)
        monkeypatch.undo()
        assert np.abs(as_numpy(maps) - theirs).max() <= 1e-5 * np.abs(theirs).max()
