"""Average Drop / Increase / Gain: the all-ones map, a NumPy reference, twins, the contract."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from _shared import outputs_of

import xai_toolbox as xt
from xai_toolbox.metrics.average import AverageDrop, AverageGain, AverageIncrease, saliency_mask
from xai_toolbox.testing import check_metric, cnn, to_framework, twin_cnn

CLASSES = [AverageDrop, AverageIncrease, AverageGain]


def average_reference(
    model: Any, framework: str, images: np.ndarray, maps: np.ndarray, targets: np.ndarray, *,
    softmax: bool, absolute: bool,
) -> dict[str, np.ndarray]:
    """The three formulas of Chattopadhay et al. / Zhang et al. on min-max normalised masks."""
    m = np.abs(maps) if absolute else maps
    lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    masks = (m - lo) / (hi - lo)

    def score(batch: np.ndarray) -> np.ndarray:
        out = outputs_of(model, framework, batch)
        if softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out[np.arange(len(batch)), targets]

    p, o = score(images), score(images * masks[:, None])
    return {
        "average_drop": np.maximum(0, p - o) / (p + 1e-8),
        "average_increase": (p < o).astype(float),
        "average_gain": np.maximum(0, o - p) / (1 - p + 1e-8),
    }


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def test_all_ones_map_drops_nothing(framework: str) -> None:
    model = cnn(framework, seed=1)
    x = to_framework(_images(), framework)
    ones = np.ones((4, 16, 16), np.float32)
    assert np.all(AverageDrop(model)(x, None, ones).scores == 0.0)
    assert np.all(AverageIncrease(model)(x, None, ones).scores == 0.0)
    assert np.all(AverageGain(model)(x, None, ones).scores == 0.0)


@pytest.mark.parametrize("settings", [
    {"softmax": True, "absolute": False},   # the papers: probabilities
    {"softmax": False, "absolute": True},   # Xplique's defaults: logits, |map|
])
def test_matches_numpy_reference(framework: str, settings: dict) -> None:
    model = cnn(framework, seed=2)
    images, targets = _images(5, seed=3), np.array([0, 1, 2, 3, 1])
    maps = np.random.default_rng(4).normal(size=(5, 16, 16)).astype(np.float32)
    expected = average_reference(model, framework, images, maps, targets, **settings)
    params = {"activation": "softmax" if settings["softmax"] else None, "absolute": settings["absolute"], "batch_size": 2}
    x = to_framework(images, framework)
    for cls in CLASSES:
        result = cls(model, **params)(x, targets, maps)
        np.testing.assert_allclose(result.scores, expected[cls.name], rtol=1e-4, atol=1e-6, err_msg=cls.name)
        assert result.mean == pytest.approx(expected[cls.name].mean(), rel=1e-4, abs=1e-6)


def test_percent_and_directions(framework: str) -> None:
    model = cnn(framework, seed=2)
    x, targets = to_framework(_images(3), framework), np.array([0, 1, 2])
    maps = np.random.default_rng(1).random((3, 16, 16), dtype=np.float32)
    for cls in CLASSES:
        frac = cls(model)(x, targets, maps)
        pct = cls(model, percent=True)(x, targets, maps)
        np.testing.assert_allclose(pct.scores, 100 * frac.scores)
    assert not AverageDrop.higher_is_better and AverageIncrease.higher_is_better and AverageGain.higher_is_better


def test_saliency_mask_constant_maps() -> None:
    maps = np.stack([np.full((3, 3), 2.0), np.zeros((3, 3)), np.arange(9.0).reshape(3, 3)]).astype(np.float32)
    mask = saliency_mask(ep.astensor(maps)).numpy()
    np.testing.assert_array_equal(mask[0], 1.0)  # a constant positive map keeps everything
    np.testing.assert_array_equal(mask[1], 0.0)
    np.testing.assert_allclose(mask[2], np.arange(9.0).reshape(3, 3) / 8, rtol=1e-6)
    np.testing.assert_allclose(saliency_mask(ep.astensor(-maps[2:]), absolute=True).numpy()[0], mask[2], rtol=1e-6)


def test_twin_models_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=6)
    images, targets = _images(4, seed=5), np.array([3, 2, 1, 0])
    maps = np.random.default_rng(2).random((4, 16, 16), dtype=np.float32)
    for cls in CLASSES:
        a = cls(torch_model)(to_framework(images, "torch"), targets, maps)
        b = cls(keras_model)(to_framework(images, "tf"), targets, maps)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, err_msg=cls.name)


@pytest.mark.parametrize("cls", CLASSES)
def test_contract(cls: type, pytestconfig: pytest.Config) -> None:
    check_metric(cls, frameworks=pytestconfig.frameworks)


def test_registered_names() -> None:
    assert {"average_drop", "average_increase", "average_gain"} <= set(xt.list_metrics())
    with pytest.raises(xt.ParameterError):
        AverageDrop(None, activation="tanh")
