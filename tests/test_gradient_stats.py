"""SquareGrad and VarGrad: exact NumPy references from the same noise, analytic expectations,
the stable accumulation, twins, batch-size invariance, Captum parity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.testing import as_numpy, check_method, cnn, linear_model, to_framework, twin_cnn

FAST = {"nb_samples": 6, "seed": 3}


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def _shifted_half_square(framework: str, shift: float) -> Any:
    """A model whose score is ``Σ (shift · x + x² / 2)``: its input gradient is ``shift + x``."""
    if framework == "torch":
        import torch

        class Model(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return (shift * x + 0.5 * x**2).flatten(1).sum(1, keepdim=True)

        return Model()
    import keras

    inputs = keras.Input((6, 6, 2))
    score = keras.layers.Lambda(lambda x: keras.ops.sum(shift * x + 0.5 * x**2, axis=(1, 2, 3))[:, None])
    return keras.Model(inputs, score(inputs))


def _host_noise(framework: str, model: Any, images: np.ndarray, seed: int, n: int, sigma: np.ndarray) -> np.ndarray:
    """The noise the methods add, ``(N, n, C, H, W)`` channels first, from the public noise source."""
    adapter = xe.adapt(model)
    x = adapter.to_model(to_framework(images, framework))
    noise = xe.noise_source("host", adapter, x, seed, n)
    drawn = as_numpy(xe.channels_first(noise.scaled(xe.Chunk(0, len(images) * n, n), sigma), adapter.channel_axis))
    return drawn.reshape(len(images), n, *images.shape[1:])


def test_exact_on_a_model_whose_gradient_is_its_input(framework: str) -> None:
    # G_k = shift + x + ε_k exactly, so both statistics follow from the noise itself, which
    # pins the noise (absolute and range-relative scales) and the estimators together.
    images = np.random.default_rng(1).normal(size=(2, 2, 6, 6)).astype(np.float32)
    model, n = _shifted_half_square(framework, 0.0), 7
    batch = to_framework(images, framework)
    for scale, noise in (("absolute", 0.3), ("range", 0.1)):
        flat = images.reshape(2, -1)
        sigma = np.full(2, noise, np.float32) if scale == "absolute" else (flat.max(1) - flat.min(1)) * noise
        grads = images[:, None].astype(np.float64) + _host_noise(framework, model, images, 5, n, sigma.astype(np.float32))
        params = {"nb_samples": n, "noise": noise, "noise_scale": scale, "seed": 5, "batch_size": 4}
        square = as_numpy(xt.SquareGrad(model, **params)(batch, [0, 0]))
        np.testing.assert_allclose(square, (grads**2).mean(axis=1).mean(axis=1), rtol=1e-5, atol=1e-6)
        for ddof in (0, 1):
            var = as_numpy(xt.VarGrad(model, ddof=ddof, **params)(batch, [0, 0]))
            np.testing.assert_allclose(var, grads.var(axis=1, ddof=ddof).mean(axis=1), rtol=1e-4, atol=1e-6)
        summed = as_numpy(xt.VarGrad(model, reducer="sum", **params)(batch, [0, 0]))
        np.testing.assert_allclose(summed, grads.var(axis=1, ddof=1).sum(axis=1), rtol=1e-4, atol=1e-6)


def test_variance_is_accurate_when_the_mean_dwarfs_the_spread(framework: str) -> None:
    # Gradients ≈ 1000 ± 1e-3: E[G²] − E[G]² in float32 would lose every digit (its rounding
    # error, ~1e6 · 6e-8, dwarfs the variance, 1e-6); the pairwise update of the running
    # moments keeps them. The reference is the float64 variance of the float32 gradients.
    images = np.random.default_rng(2).random((1, 2, 6, 6), dtype=np.float32)
    model, n = _shifted_half_square(framework, 1000.0), 40
    noise = _host_noise(framework, model, images, 0, n, np.full(1, 1e-3, np.float32))
    grads = (np.float32(1000.0) + (images[:, None] + noise)).astype(np.float64)
    expected = grads.var(axis=1, ddof=1).mean(axis=1)
    for batch_size in (7, 64):
        var = as_numpy(xt.VarGrad(model, nb_samples=n, noise=1e-3, seed=0, batch_size=batch_size)(to_framework(images, framework), [0]))
        np.testing.assert_allclose(var, expected, rtol=1e-3)


def test_expectations_on_the_square_model(framework: str) -> None:
    # f = Σ x²/2: E[SquareGrad] = x² + σ², E[VarGrad] = σ² (unbiased), within 5 standard errors.
    image = np.linspace(-1.0, 1.0, 72, dtype=np.float32).reshape(1, 2, 6, 6)
    model, n, sigma = _shifted_half_square(framework, 0.0), 2000, 0.2
    batch = to_framework(image, framework)
    square = as_numpy(xt.SquareGrad(model, nb_samples=n, noise=sigma, batch_size=500)(batch, [0]))[0]
    var = as_numpy(xt.VarGrad(model, nb_samples=n, noise=sigma, batch_size=500)(batch, [0]))[0]
    x = image[0].astype(np.float64)
    spread = np.sqrt((4 * x**2 * sigma**2 + 2 * sigma**4).mean(axis=0) / (2 * n))  # channel mean of two
    assert np.all(np.abs(square - (x**2 + sigma**2).mean(axis=0)) < 5 * spread)
    assert np.abs(var - sigma**2).max() < 5 * sigma**2 * np.sqrt(2 / (n - 1)) / np.sqrt(2)


def test_linear_model(framework: str) -> None:
    w = np.random.default_rng(0).normal(size=(3, 3, 6, 5)).astype(np.float32)
    model = linear_model(framework, w)
    batch = to_framework(np.random.default_rng(1).random((2, 3, 6, 5), dtype=np.float32), framework)
    square = as_numpy(xt.SquareGrad(model, nb_samples=5)(batch, [2, 0]))
    np.testing.assert_allclose(square, (w[[2, 0]] ** 2).mean(axis=1), rtol=1e-5)
    var = as_numpy(xt.VarGrad(model, nb_samples=5)(batch, [2, 0]))
    assert np.abs(var).max() <= 1e-6 * (w**2).max()


@pytest.mark.parametrize("name", ["squaregrad", "vargrad"])
def test_twins_agree_and_batch_size_does_not_matter(both: None, name: str) -> None:
    torch_model, keras_model = twin_cnn(seed=1)
    images, targets = _images(4), np.array([0, 1, 2, 3])
    params = {"nb_samples": 5, "noise": 0.1, "seed": 2}
    a = as_numpy(xt.method(name, torch_model, batch_size=3, **params)(to_framework(images, "torch"), targets))
    b = as_numpy(xt.method(name, keras_model, batch_size=64, **params)(to_framework(images, "tf"), targets))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    c = as_numpy(xt.method(name, torch_model, batch_size=1, **params)(to_framework(images, "torch"), targets))
    np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())


@pytest.mark.parametrize("name", ["squaregrad", "vargrad"])
def test_contract(name: str, pytestconfig: pytest.Config) -> None:
    check_method(xt.api.get_registry().method(name).cls, FAST, frameworks=pytestconfig.frameworks)


def test_seeds_and_device_noise(framework: str) -> None:
    net = cnn(framework)
    batch = to_framework(_images(2), framework)
    a = as_numpy(xt.VarGrad(net, nb_samples=4, seed=7)(batch, [0, 1]))
    assert np.abs(a - as_numpy(xt.VarGrad(net, nb_samples=4, seed=8)(batch, [0, 1]))).max() > 0
    device = xt.SquareGrad(net, nb_samples=4, seed=7, noise_source="device")
    np.testing.assert_allclose(
        as_numpy(device(batch, [0, 1])), as_numpy(xt.SquareGrad(net, nb_samples=4, seed=7, noise_source="device", batch_size=3)(batch, [0, 1])),
        rtol=1e-5, atol=1e-9,
    )
    no_noise = as_numpy(xt.SquareGrad(net, nb_samples=2, noise=0.0, reducer="sum")(batch, [0, 1]))
    adapter = xe.adapt(net)
    x = adapter.to_model(batch)
    grads = adapter.weighted_value_and_grad(x, adapter.from_numpy(x, np.eye(4, dtype=np.float32)[[0, 1]]))[1]
    expected = as_numpy(xe.reduce_channels(grads * grads, adapter.channel_axis, "sum"))
    np.testing.assert_allclose(no_noise, expected, rtol=1e-5, atol=1e-12)
    assert np.abs(as_numpy(xt.VarGrad(net, nb_samples=3, noise=0.0)(batch, [0, 1]))).max() <= 1e-12 * expected.max()


def test_bad_parameters() -> None:
    for params, match in (
        ({"nb_samples": 1}, "nb_samples > ddof"),
        ({"noise": -0.1}, "noise"),
        ({"noise_scale": "relative"}, "noise_scale"),
        ({"noise_source": "gpu"}, "noise_source"),
        ({"reducer": "median"}, "reducer"),
        ({"ddof": 2}, "ddof"),
    ):
        with pytest.raises(xt.ParameterError, match=match):
            xt.VarGrad(None, **params)
    xt.VarGrad(None, nb_samples=1, ddof=0)
    assert xt.SquareGrad(None, nb_samples=1).passes_per_image() == 1


def test_parity_with_captum(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Captum's NoiseTunnel draws its noise with torch.normal: it is given ours, in its order
    # (each input's samples together), so the settings are identical.
    captum = pytest.importorskip("captum.attr")
    net = cnn("torch", seed=4)
    images, targets, n, sigma = _images(3, seed=5), [0, 2, 3], 6, 0.2
    noise = torch.from_numpy(_host_noise("torch", net, images, 9, n, np.full(3, sigma, np.float32)).reshape(-1, 3, 16, 16))
    monkeypatch.setattr(torch, "normal", lambda mean, std, *a, **k: noise.clone())
    batch = torch.from_numpy(images)
    for nt_type, ours in (
        ("smoothgrad_sq", xt.SquareGrad(net, nb_samples=n, noise=sigma, seed=9)),
        ("vargrad", xt.VarGrad(net, nb_samples=n, noise=sigma, seed=9, ddof=0)),
    ):
        theirs = captum.NoiseTunnel(captum.Saliency(net)).attribute(
            batch, nt_type=nt_type, nt_samples=n, stdevs=sigma, target=targets, abs=False
        ).detach().numpy().mean(axis=1)
        mine = as_numpy(ours(batch, targets))
        assert np.abs(mine - theirs).max() <= 1e-5 * np.abs(theirs).max(), nt_type
