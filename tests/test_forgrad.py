"""FORGrad: the low-pass filter against NumPy's FFT (Xplique's rfft form for even sizes), the
reference notes' anchors, native tensors in and out, and the method wrapper."""

from __future__ import annotations

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.plugins.forgrad import default_sigma, forgrad, low_pass_mask
from xai_toolbox.testing import as_numpy, check_method, cnn, linear_model, to_framework, twin_cnn


def _fft_reference(maps: np.ndarray, sigma: float) -> np.ndarray:
    """``|ifft2(fft2(|φ|) ⊙ mask)|`` with NumPy's FFT."""
    mask = low_pass_mask(*maps.shape[1:], sigma)
    return np.abs(np.fft.ifft2(np.fft.fft2(np.abs(maps.astype(np.float64))) * mask).real)


def _xplique_form(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Xplique's computation for square maps of even size: the centred disk, un-centred with
    ``fftshift``, its first ``H//2 + 1`` columns on ``rfft2``, then ``irfft2``."""
    h = maps.shape[1]
    c = h // 2
    ky, kx = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    disk = (np.sqrt((kx - c) ** 2 + (ky - c) ** 2) <= sigma).astype(np.float64)
    half = np.fft.fftshift(disk)[:, : h // 2 + 1]
    return np.abs(np.fft.irfft2(np.fft.rfft2(np.abs(maps.astype(np.float64))) * half, s=(h, h)))


def test_matches_numpy_fft_and_xplique() -> None:
    rng = np.random.default_rng(0)
    for shape, sigma in (((2, 16, 16), 3.0), ((1, 15, 15), 4.5), ((2, 12, 20), 2.0), ((1, 32, 32), 10.0)):
        maps = rng.normal(size=shape).astype(np.float32)
        out = forgrad(maps, sigma)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
        np.testing.assert_allclose(out, _fft_reference(maps, sigma), atol=2e-5 * np.abs(maps).max())
        if shape[1] == shape[2] and shape[1] % 2 == 0:
            np.testing.assert_allclose(out, _xplique_form(maps, sigma), atol=2e-5 * np.abs(maps).max())


def test_reference_anchors() -> None:
    rng = np.random.default_rng(1)
    constant = np.full((2, 8, 8), 0.7, np.float32)
    np.testing.assert_allclose(forgrad(constant, 1.0), constant, rtol=1e-5)  # only DC is there
    maps = rng.normal(size=(2, 8, 8)).astype(np.float32)
    # σ ≥ the farthest frequency (√2 · H/2 ≈ 0.708 H) keeps every bin: |φ| comes back
    np.testing.assert_allclose(forgrad(maps, 0.708 * 8), np.abs(maps), atol=1e-5)
    assert int(low_pass_mask(8, 8, 1.0).sum()) == 5  # DC and (±1, 0), (0, ±1)
    # σ = 1 keeps the mean and the four slowest waves: |φ̄ + Σ (2/HW) Re(F_k e^{2πi k·r})|
    spectrum = np.fft.fft2(np.abs(maps.astype(np.float64)))
    r = np.arange(8)
    waves = sum(
        2 / 64 * (spectrum[:, ky, kx, None, None] * np.exp(2j * np.pi * (ky * r[:, None] + kx * r[None, :]) / 8)).real
        for ky, kx in ((1, 0), (0, 1))
    )
    np.testing.assert_allclose(forgrad(maps, 1.0), np.abs(spectrum[:, 0, 0, None, None].real / 64 + waves), atol=1e-5)
    assert np.all(forgrad(maps) >= 0)
    assert default_sigma(224, 224) == 15.0 and default_sigma(112, 64) == 15.0 * 64 / 224


def test_native_tensors_stay_native(framework: str) -> None:
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(3, 16, 16)).astype(np.float32)
    native = to_framework(maps[:, None], framework)  # any native tensor of the framework
    native = native[:, 0] if framework == "torch" else native[..., 0]
    out = forgrad(native, 4.0)
    assert type(out) is type(native)
    np.testing.assert_allclose(as_numpy(out), forgrad(maps, 4.0), atol=1e-5)


def test_the_method_filters_the_wrapped_maps(framework: str) -> None:
    net = cnn(framework, seed=2)
    batch = to_framework(np.random.default_rng(3).random((3, 3, 16, 16), dtype=np.float32), framework)
    saliency = as_numpy(xt.Saliency(net)(batch, [0, 1, 2]))
    expected = forgrad(saliency, default_sigma(16, 16))
    np.testing.assert_allclose(as_numpy(xt.method("forgrad", net)(batch, [0, 1, 2])), expected, atol=1e-6)
    for method in ("smoothgrad", xt.SmoothGrad, xt.SmoothGrad(None, nb_samples=3, seed=1)):
        params = {} if isinstance(method, xt.AttributionMethod) else {"nb_samples": 3, "seed": 1}
        wrapped = xt.FORGrad(net, method=method, method_params=params, sigma=3.0, batch_size=2)
        inner = as_numpy(xt.SmoothGrad(net, nb_samples=3, seed=1)(batch, [0, 1, 2]))
        np.testing.assert_allclose(as_numpy(wrapped(batch, [0, 1, 2])), forgrad(inner, 3.0), atol=1e-6)
        assert wrapped.passes_per_image() == 3


def test_twins_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=4)
    images, targets = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32), [1, 3]
    params = {"method": "gradient_input", "sigma": 5.0}
    a = as_numpy(xt.FORGrad(torch_model, **params)(to_framework(images, "torch"), targets))
    b = as_numpy(xt.FORGrad(keras_model, **params)(to_framework(images, "tf"), targets))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_contract(pytestconfig: pytest.Config) -> None:
    check_method(xt.FORGrad, {"method": "saliency", "sigma": 4.0}, frameworks=pytestconfig.frameworks)


def test_bad_parameters_and_inputs(framework: str) -> None:
    with pytest.raises(xt.UnknownNameError, match="saliency"):
        xt.FORGrad(None, method="no_such_method")
    with pytest.raises(xt.ParameterError, match="steps"):
        xt.FORGrad(None, method="integrated_gradients", method_params={"steps": 0})
    with pytest.raises(xt.ParameterError, match="method must be"):
        xt.FORGrad(None, method=42)
    with pytest.raises(xt.ParameterError, match="method_params"):
        xt.FORGrad(None, method_params=[1])
    for sigma in (0, -1.0, float("nan"), "wide"):
        with pytest.raises(xt.ParameterError, match="sigma"):
            xt.FORGrad(None, sigma=sigma)
        with pytest.raises(xt.ParameterError, match="sigma"):
            forgrad(np.zeros((1, 4, 4), np.float32), sigma)
    with pytest.raises(xt.InputError, match="N, H, W"):
        forgrad(np.zeros((4, 4), np.float32))
    rows = np.random.default_rng(0).random((2, 5), dtype=np.float32)
    with pytest.raises(xt.InputError, match="image"):
        xt.FORGrad(linear_model(framework, np.ones((2, 5), np.float32)))(rows, [0, 1])
