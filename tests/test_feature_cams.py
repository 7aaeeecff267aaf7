"""Eigen-CAM and FEM: toy feature maps with known answers (reference B6, B7), NumPy
references on the test CNN, the sign rule, twins, the contract, errors before any model call."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from _cam_models import explain, feature_model, relu2_and_head, twin_disagreement, upsample
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox.plugins.feature_cams import top_eigenvector
from xai_toolbox.testing import check_method, cnn

HEAD = np.array([[1.0, -2.0], [0.5, 0.25]], np.float32)  # any GAP head: both methods ignore it


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


# -- Eigen-CAM --------------------------------------------------------------------------------
def _rank_one(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """One image whose channel k is a_k · s: feature maps (1, K, h, w)."""
    return (a[:, None, None] * s[None]).astype(np.float32)[None]


def test_eigencam_rank_one_feature_maps(framework: str) -> None:
    """A_k(p) = a_k s(p): the first component is ±a/‖a‖ and the projection ±‖a‖(s − mean s)."""
    rng = np.random.default_rng(0)
    s = rng.random((5, 6))
    s[2, 3] = -4.0  # a deep negative spike: its magnitude exceeds every positive value
    centred = s - s.mean()
    a = np.array([0.5, 1.5, -0.25])
    model = feature_model(framework, HEAD[:, :1].repeat(3, axis=1))
    norm = np.linalg.norm(a)
    for coefficients in (a, -a):  # Σa > 0, then < 0: the channel-sum sign follows it
        x = _rank_one(coefficients, s)
        maps = explain(framework, model, "eigencam", x, [0], layer="feat")
        expected = np.maximum(np.sign(coefficients.sum()) * norm * centred, 0)
        np.testing.assert_allclose(maps[0], expected, rtol=1e-4, atol=1e-5)
        by_magnitude = explain(framework, model, "eigencam", x, [0], layer="feat", sign="max_abs")
        np.testing.assert_allclose(by_magnitude[0], np.maximum(-norm * centred, 0), rtol=1e-4, atol=1e-5)
    # The two rules differ here: the spike makes the negative side the larger one.
    assert np.abs(np.maximum(norm * centred, 0) - np.maximum(-norm * centred, 0)).max() > 1


def _eigencam_reference(acts: np.ndarray, sign: str) -> np.ndarray:
    n, k, h, w = acts.shape
    maps = []
    for a in acts:
        x = a.reshape(k, h * w).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        p = x @ vt[0]
        if sign == "channel_sum":
            total = x.sum(axis=1)
            flip = p @ total < 0
        else:
            flip = -p.min() > p.max()
        maps.append(np.maximum(-p if flip else p, 0).reshape(h, w))
    return np.stack(maps)


@pytest.mark.parametrize("sign", ["channel_sum", "max_abs"])
@pytest.mark.parametrize("layer", ["relu2", "conv2", "relu1"])  # relu1: more positions than channels
def test_eigencam_matches_numpy_svd_on_the_cnn(framework: str, layer: str, sign: str) -> None:
    x = _images()
    acts, _, _ = relu2_and_head(framework, x, layer=layer)
    expected = _eigencam_reference(acts, sign)
    if expected.shape[-1] != 16:
        expected = upsample(expected, 16)
    maps = explain(framework, cnn(framework, seed=5), "eigencam", x, [0, 3, 1], layer=layer, sign=sign)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4 * expected.max())
    assert expected.max() > 0
    other_targets = explain(framework, cnn(framework, seed=5), "eigencam", x, [2, 2, 2], layer=layer, sign=sign)
    np.testing.assert_array_equal(other_targets, maps)  # class-agnostic


def test_top_eigenvector_against_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 7, 12))
    gram = np.einsum("bik,bjk->bij", x, x)
    u = top_eigenvector(ep.astensor(gram.astype(np.float32))).numpy()
    _, vectors = np.linalg.eigh(gram)
    top = vectors[:, :, -1]
    np.testing.assert_allclose(np.abs((u * top).sum(axis=1)), 1.0, atol=1e-5)
    zero = top_eigenvector(ep.astensor(np.zeros((2, 3, 3), np.float32))).numpy()
    np.testing.assert_array_equal(zero, 0.0)


def test_eigencam_of_constant_feature_maps_is_zero(framework: str) -> None:
    x = np.full((2, 3, 4, 5), 0.5, np.float32)
    maps = explain(framework, feature_model(framework, np.ones((2, 3))), "eigencam", x, [0, 1], layer="feat")
    np.testing.assert_array_equal(maps, 0.0)


# -- FEM -----------------------------------------------------------------------------------------
def _spike(n: int, value: float, at: int, constant: float | None = None) -> np.ndarray:
    """One image of 1 × n positions: channel 0 is 0 except ``value`` at ``at``; optionally a
    second channel equal to ``constant`` everywhere."""
    channels = [np.zeros(n)]
    channels[0][at] = value
    if constant is not None:
        channels.append(np.full(n, constant))
    return np.stack(channels).astype(np.float32)[None, :, None, :]


def _fem(framework: str, x: np.ndarray, variant: str) -> np.ndarray:
    model = feature_model(framework, HEAD[:, : x.shape[1]])
    return explain(framework, model, "fem", x, [0], layer="feat", variant=variant)[0, 0]


@pytest.mark.parametrize("variant", ["xplique", "pytorch_grad_cam"])
def test_fem_single_spike(framework: str, variant: str) -> None:
    """(a) n ≥ 6: the spike is above μ + 2σ; both rules give v/n there and 0 elsewhere."""
    expected = np.zeros(8)
    expected[3] = 3.0 / 8
    np.testing.assert_allclose(_fem(framework, _spike(8, 3.0, 3), variant), expected, rtol=1e-6)


def test_fem_threshold_tie(framework: str) -> None:
    """(b) n = 5, v = 5: μ = 1, σ = 2, the spike equals T = 5 exactly: ≥ keeps it, > drops it."""
    kept = np.zeros(5)
    kept[1] = 1.0
    np.testing.assert_array_equal(_fem(framework, _spike(5, 5.0, 1), "xplique"), kept)
    np.testing.assert_array_equal(_fem(framework, _spike(5, 5.0, 1), "pytorch_grad_cam"), 0.0)


def test_fem_constant_channel(framework: str) -> None:
    """(c) a constant channel c has σ = 0: Xplique keeps all of it (adds c everywhere),
    pytorch-grad-cam nothing — also for a c whose mean rounds (0.1 · 7 / 7 ≠ 0.1 in float32)."""
    for c in (0.5, 0.1):
        x = _spike(7, 2.0, 4, constant=c)
        spike = np.zeros(7)
        spike[4] = 2.0 / 7
        np.testing.assert_allclose(_fem(framework, x, "xplique"), np.float32(c) + spike, rtol=1e-6)
        np.testing.assert_allclose(_fem(framework, x, "pytorch_grad_cam"), spike, rtol=1e-6)


def _fem_reference(acts: np.ndarray, variant: str, k: float) -> np.ndarray:
    mean = acts.mean(axis=(2, 3), keepdims=True)
    threshold = mean + k * acts.std(axis=(2, 3), keepdims=True)
    constant = acts.max(axis=(2, 3), keepdims=True) == acts.min(axis=(2, 3), keepdims=True)
    if variant == "xplique":
        return (mean * ((acts >= threshold) | constant)).sum(axis=1)
    kept = (acts > threshold) & ~constant
    return np.maximum((kept.mean(axis=(2, 3), keepdims=True) * acts).sum(axis=1), 0)


@pytest.mark.parametrize("variant", ["xplique", "pytorch_grad_cam"])
@pytest.mark.parametrize("layer", ["relu2", "conv2"])
def test_fem_matches_a_numpy_reference_on_the_cnn(framework: str, layer: str, variant: str) -> None:
    x = _images(seed=2)
    acts, _, _ = relu2_and_head(framework, x, layer=layer)
    for k in (2.0, 1.0):
        expected = upsample(_fem_reference(acts, variant, k), 16)
        maps = explain(framework, cnn(framework, seed=5), "fem", x, [0, 3, 1], layer=layer, variant=variant, k=k)
        np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
        assert np.abs(expected).max() > 0


# -- both ------------------------------------------------------------------------------------------
CASES = {
    "eigencam": {},
    "eigencam_max_abs": {"sign": "max_abs"},
    "fem": {},
    "fem_pgc": {"variant": "pytorch_grad_cam"},
}


def _method(key: str) -> str:
    return key.split("_")[0]


@pytest.mark.parametrize("key", CASES)
def test_contract(pytestconfig: pytest.Config, key: str) -> None:
    cls = xt.api.get_registry().method(_method(key)).cls
    check_method(cls, {"layer": "relu2", **CASES[key]}, frameworks=pytestconfig.frameworks)


@pytest.mark.parametrize("key", CASES)
def test_twins_agree_within_1e4_of_the_max(both: None, key: str) -> None:
    for layer in ("relu2", "conv2", "relu1"):
        assert twin_disagreement(_method(key), layer, **CASES[key]) <= 1e-4, f"{key} at {layer}"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("eigencam", {"sign": "positive"}),
        ("eigencam", {"sign": None}),
        ("fem", {"k": "two"}),
        ("fem", {"k": float("inf")}),
        ("fem", {"variant": "paper"}),
    ],
)
def test_bad_parameters_fail_at_construction(framework: str, name: str, params: dict[str, Any]) -> None:
    counted = CountedModel(framework)
    with pytest.raises(xt.ParameterError):
        xt.method(name, counted.model, **params)
    assert counted.calls == 0


@pytest.mark.parametrize("name", ["eigencam", "fem"])
def test_bad_layer_fails_before_any_model_call(framework: str, name: str) -> None:
    counted = CountedModel(framework)
    x = np.zeros((1, 16, 16, 3) if framework == "tf" else (1, 3, 16, 16), np.float32)
    with pytest.raises(xt.LayerError, match="not found"):
        xt.method(name, counted.model, layer="conv9")(x, [0])
    assert counted.calls == 0
