"""Gradient methods: twins across frameworks, analytic references, Captum parity, contract."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import (
    as_numpy,
    check_method,
    cnn,
    linear_model,
    normalized,
    to_framework,
    twin_cnn,
)

GRADIENT_METHODS = ["saliency", "gradient_input", "integrated_gradients", "smoothgrad", "gradcam", "gradcampp"]
FAST = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"nb_samples": 6, "seed": 3}}


def _images(n: int = 4, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_twin_models_give_the_same_map(both: None, name: str) -> None:
    torch_model, keras_model = twin_cnn(seed=1)
    images, targets = _images(), np.array([0, 1, 2, 3])
    params = {"batch_size": 3, **FAST.get(name, {})}
    a = as_numpy(xt.method(name, torch_model, **params)(to_framework(images, "torch"), targets))
    b = as_numpy(xt.method(name, keras_model, **params)(to_framework(images, "tf"), targets))
    assert a.shape == b.shape == (4, 16, 16)
    assert np.abs(normalized(a) - normalized(b)).max() <= 1e-4


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_contract(name: str, pytestconfig: pytest.Config) -> None:
    cls = xt.api.get_registry().method(name).cls
    check_method(cls, FAST.get(name, {}), frameworks=pytestconfig.frameworks)


def _linear(framework: str, seed: int = 0) -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    x = rng.random((2, 3, 6, 5), dtype=np.float32)
    return linear_model(framework, w), w, x


def test_saliency_of_linear_model_is_max_abs_weight(framework: str) -> None:
    model, w, x = _linear(framework)
    maps = as_numpy(xt.Saliency(model)(to_framework(x, framework), [2, 0]))
    np.testing.assert_allclose(maps[0], np.abs(w[2]).max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(maps[1], np.abs(w[0]).max(axis=0), rtol=1e-6)


def test_gradient_input_of_linear_model_is_each_contribution(framework: str) -> None:
    model, w, x = _linear(framework)
    maps = as_numpy(xt.method("gradient_input", model)(to_framework(x, framework), [1, 1]))
    np.testing.assert_allclose(maps, (w[1][None] * x).sum(axis=1), rtol=1e-5, atol=1e-6)


def test_integrated_gradients_is_exact_on_linear_and_complete_on_cnn(framework: str) -> None:
    model, w, x = _linear(framework)
    ig = as_numpy(xt.IntegratedGradients(model, steps=5)(to_framework(x, framework), [0, 2]))
    np.testing.assert_allclose(ig[1], (w[2] * x[1]).sum(axis=0), rtol=1e-5, atol=1e-6)
    # completeness on a nonlinear model: the map sums to S(x) - S(baseline)
    net = cnn(framework, seed=2)
    images = _images(2)
    batch = to_framework(images, framework)
    for rule in ("trapezoid", "gausslegendre"):
        maps = as_numpy(xt.IntegratedGradients(net, steps=64, rule=rule)(batch, [1, 3]))
        out = as_numpy(net(batch))
        base = as_numpy(net(to_framework(np.zeros_like(images), framework)))
        expected = out[[0, 1], [1, 3]] - base[[0, 1], [1, 3]]
        np.testing.assert_allclose(maps.sum(axis=(1, 2)), expected, rtol=2e-2, atol=2e-3)


def test_integrated_gradients_baseline_forms(framework: str) -> None:
    model, w, x = _linear(framework)
    batch = to_framework(x, framework)
    one = x[0] if framework == "torch" else x[0].transpose(1, 2, 0)
    a = as_numpy(xt.IntegratedGradients(model, steps=4, baseline=one)(batch, [0, 0]))
    np.testing.assert_allclose(a[0], 0.0, atol=1e-6)  # baseline == input: nothing to attribute
    np.testing.assert_allclose(a[1], (w[0] * (x[1] - x[0])).sum(axis=0), rtol=1e-4, atol=1e-5)
    with pytest.raises(xt.ParameterError, match="baseline of shape"):
        xt.IntegratedGradients(model, baseline=np.zeros((2, 2), np.float32))(batch, [0, 0])


def test_smoothgrad_seed_and_noise(framework: str) -> None:
    net = cnn(framework)
    batch = to_framework(_images(2), framework)
    a = as_numpy(xt.SmoothGrad(net, nb_samples=5, seed=7)(batch, [0, 1]))
    b = as_numpy(xt.SmoothGrad(net, nb_samples=5, seed=7, batch_size=3)(batch, [0, 1]))
    c = as_numpy(xt.SmoothGrad(net, nb_samples=5, seed=8)(batch, [0, 1]))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert np.abs(a - c).max() > 1e-4
    no_noise = as_numpy(xt.SmoothGrad(net, nb_samples=3, noise=0.0)(batch, [0, 1]))
    np.testing.assert_allclose(no_noise, as_numpy(xt.Saliency(net)(batch, [0, 1])), rtol=1e-5, atol=1e-7)


def test_host_noise_is_standard_normal() -> None:
    from xai_toolbox.extend import standard_normal as _standard_normal

    drawn = _standard_normal(np.random.default_rng(0), (1000, 1001))
    assert drawn.dtype == np.float32 and drawn.shape == (1000, 1001) and np.isfinite(drawn).all()
    z = drawn.astype(np.float64).ravel()
    sd = 1 / np.sqrt(z.size)
    assert abs(z.mean()) < 5 * sd and abs(z.var() - 1) < 5 * np.sqrt(2) * sd
    assert abs((z**4).mean() - 3) < 5 * np.sqrt(96) * sd  # normal tails, not just two moments
    for t in (0.5, 1.0, 2.0, 3.0):  # P(|z| > t) = erfc(t / √2)
        p = math.erfc(t / math.sqrt(2))
        assert abs((np.abs(z) > t).mean() - p) < 5 * np.sqrt(p * (1 - p)) * sd
    half = z.size // 2  # the two values of a Box–Muller pair are independent
    assert abs(np.corrcoef(z[:half], z[half : 2 * half])[0, 1]) < 5 * sd * np.sqrt(2)
    assert abs(np.corrcoef(z[:half] ** 2, z[half : 2 * half] ** 2)[0, 1]) < 5 * sd * np.sqrt(2)
    odd = _standard_normal(np.random.default_rng(1), (3, 5, 7))
    assert odd.shape == (3, 5, 7) and odd.dtype == np.float32
    np.testing.assert_array_equal(odd, _standard_normal(np.random.default_rng(1), (3, 5, 7)))


def _half_square(framework: str) -> Any:
    """A model whose score is ``Σ x² / 2``: its input gradient is the input itself."""
    if framework == "torch":
        import torch

        class HalfSquare(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return 0.5 * (x**2).flatten(1).sum(1, keepdim=True)

        return HalfSquare()
    import keras

    inputs = keras.Input((4, 4, 1))
    half_square = keras.layers.Lambda(lambda x: 0.5 * keras.ops.sum(x**2, axis=(1, 2, 3))[:, None])
    return keras.Model(inputs, half_square(inputs))


def test_smoothgrad_matches_the_folded_normal_mean(framework: str) -> None:
    # With ∂S/∂x = x, SmoothGrad is E|x + ε|, ε ~ N(0, σ²): the folded normal mean. This pins
    # the noise's distribution and its scale σ = noise · (max − min) together.
    image = np.linspace(-0.5, 1.0, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    noise, n = 0.2, 4000
    sigma = noise * 1.5
    maps = as_numpy(
        xt.SmoothGrad(_half_square(framework), nb_samples=n, noise=noise, batch_size=1000)(
            to_framework(image, framework), [0]
        )
    )[0]
    x = image[0, 0].astype(np.float64)
    erf = np.vectorize(math.erf)
    mean = sigma * np.sqrt(2 / np.pi) * np.exp(-(x**2) / (2 * sigma**2)) + x * erf(x / (sigma * np.sqrt(2)))
    spread = np.sqrt(x**2 + sigma**2 - mean**2)
    assert np.all(np.abs(maps - mean) < 5 * spread / np.sqrt(n))


def test_no_grad_left_on_parameters_and_mode_restored(torch) -> None:
    net = cnn("torch")
    net.train()
    batch = torch.from_numpy(_images(2))
    for name in GRADIENT_METHODS:
        xt.method(name, net, **FAST.get(name, {}))(batch, [0, 1])
        assert all(p.grad is None for p in net.parameters()), name
        assert net.training, name


def test_parity_with_captum(torch) -> None:
    captum = pytest.importorskip("captum.attr")
    net = cnn("torch", seed=4)
    batch = torch.from_numpy(_images(3, seed=5))
    targets = [0, 2, 3]
    ours = as_numpy(xt.Saliency(net)(batch, targets))
    theirs = captum.Saliency(net).attribute(batch.clone().requires_grad_(True), target=targets, abs=True)
    np.testing.assert_allclose(ours, theirs.detach().numpy().max(axis=1), rtol=1e-5, atol=1e-7)
    ig = xt.IntegratedGradients(net, steps=20, rule="gausslegendre")(batch, targets)
    theirs = captum.IntegratedGradients(net).attribute(batch, target=targets, n_steps=20, method="gausslegendre")
    np.testing.assert_allclose(as_numpy(ig), theirs.detach().numpy().sum(axis=1), rtol=1e-4, atol=1e-6)
    for net_param in net.parameters():
        net_param.grad = None


def test_score_fn_and_weight_targets(framework: str) -> None:
    model, w, x = _linear(framework)
    batch = to_framework(x, framework)
    onehot = np.eye(3, dtype=np.float32)[[2, 0]]
    by_index = as_numpy(xt.Saliency(model)(batch, [2, 0]))
    by_onehot = as_numpy(xt.Saliency(model)(batch, onehot))
    np.testing.assert_allclose(by_index, by_onehot)
    # weights (N, K): the score is a weighted sum of outputs, so the gradient is W^T weights
    mix = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, -1.0]], np.float32)
    maps = as_numpy(xt.method("gradient_input", model)(batch, mix))
    expected = np.stack([((mix[i] @ w.reshape(3, -1)).reshape(3, 6, 5) * x[i]).sum(0) for i in range(2)])
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)

    def second_minus_first(outputs, targets):  # a custom score: native tensors in and out
        return outputs[:, 1] - outputs[:, 0]

    custom = as_numpy(xt.Saliency(model, score_fn=second_minus_first)(batch))
    np.testing.assert_allclose(custom[0], np.abs(w[1] - w[0]).max(axis=0), rtol=1e-5)


def test_top1_is_the_default_target(framework: str) -> None:
    net = cnn(framework, seed=3)
    images = _images(3)
    batch = to_framework(images, framework)
    top1 = as_numpy(net(batch)).argmax(axis=1)
    np.testing.assert_allclose(as_numpy(xt.Saliency(net)(batch)), as_numpy(xt.Saliency(net)(batch, top1)))


def test_explain_helper_and_repr(framework: str) -> None:
    net = cnn(framework)
    batch = to_framework(_images(1), framework)
    maps = xt.explain(net, batch, 1, method="integrated_gradients", steps=4)
    assert as_numpy(maps).shape == (1, 16, 16)
    r = repr(xt.IntegratedGradients(net, steps=4))
    assert "IntegratedGradients(" in r and "steps=4" in r and "rule='trapezoid'" in r


def test_tabular_and_series_inputs(framework: str) -> None:
    model, w, _ = _linear(framework)
    rng = np.random.default_rng(1)
    tab_w = rng.normal(size=(2, 7)).astype(np.float32)
    rows = rng.random((3, 7), dtype=np.float32)
    tab = linear_model(framework, tab_w)
    maps = as_numpy(xt.method("gradient_input", tab)(rows, [1, 1, 0]))
    np.testing.assert_allclose(maps[0], tab_w[1] * rows[0], rtol=1e-5)
    series_w = rng.normal(size=(2, 4, 9)).astype(np.float32)  # (K, C, T) channels-first
    series = rng.random((2, 4, 9), dtype=np.float32)
    seq = linear_model(framework, series_w)
    batch = series if framework == "torch" else series.transpose(0, 2, 1).copy()
    maps = as_numpy(xt.Saliency(seq)(batch, [0, 1]))
    assert maps.shape == (2, 9)
    np.testing.assert_allclose(maps[1], np.abs(series_w[1]).max(axis=0), rtol=1e-5)
    with pytest.raises(xt.InputError, match="explains image inputs; these are tabular inputs"):
        xt.GradCAM(tab)(rows, [0, 0, 0])


def test_smoothgrad_device_noise_is_seeded_per_image(framework: str) -> None:
    net = cnn(framework)
    batch = to_framework(_images(2), framework)

    def run(**params: Any) -> np.ndarray:
        return as_numpy(xt.SmoothGrad(net, nb_samples=6, noise_source="device", **params)(batch, [0, 1]))

    a = run(seed=7)
    np.testing.assert_allclose(a, run(seed=7, batch_size=4), rtol=1e-5, atol=1e-7)  # chunks across images
    assert np.abs(a - run(seed=8)).max() > 1e-4
    assert np.abs(run(seed=None) - run(seed=None)).max() > 1e-4  # fresh noise on every call
    host = as_numpy(xt.SmoothGrad(net, nb_samples=6, seed=7)(batch, [0, 1]))
    assert np.abs(a - host).max() > 1e-4  # the framework's generator, not NumPy's
    assert np.corrcoef(a.ravel(), host.ravel())[0, 1] > 0.8  # but the same kind of noise
    np.testing.assert_allclose(
        run(noise=0.0), as_numpy(xt.Saliency(net)(batch, [0, 1])), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(xt.ParameterError, match="noise_source"):
        xt.SmoothGrad(net, noise_source="gpu")
