"""Pointing games: hand-made cases, a brute-force NumPy reference, no model call, twins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.metrics.pointing import EnergyPointingGame, PointingGame, first_argmax
from xai_toolbox.testing import check_metric, cnn, to_framework, twin_cnn


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def pointing_reference(maps: np.ndarray, masks: np.ndarray, tolerance: float) -> np.ndarray:
    """Brute force over every pair (point, mask pixel), TorchRay's strict ``d < tolerance``."""
    hits = []
    for m, g in zip(maps, masks, strict=True):
        flat = int(np.argmax(m))
        py, px = divmod(flat, m.shape[1])
        best = min(((y - py) ** 2 + (x - px) ** 2 for y, x in zip(*np.nonzero(g), strict=True)), default=None)
        hits.append(np.nan if best is None else float(best == 0 or best < tolerance**2))
    return np.array(hits)


def test_hand_made_cases(framework: str) -> None:
    model = cnn(framework, seed=0)
    x = to_framework(_images(4), framework)
    maps = np.zeros((4, 16, 16), np.float32)
    masks = np.zeros((4, 16, 16), np.float32)
    maps[0, 0, 0] = 1.0
    masks[0, 9, 12] = 1  # at distance exactly 15 from (0, 0): a miss with tolerance 15 (strict)
    maps[1, 0, 0] = 1.0
    masks[1, 9, 11] = 1  # distance sqrt(202) < 15: a hit
    maps[2] = 1.0        # all tied: the point is the first position, (0, 0)
    masks[2, 0, 0] = 1
    maps[3, 5, 5] = 1.0  # empty mask: undefined, NaN, left out of the mean
    targets = [0, 0, 1, 2]
    result = PointingGame(model)(x, targets, maps, masks=masks)
    np.testing.assert_array_equal(result.scores[:3], [0.0, 1.0, 1.0])
    assert np.isnan(result.scores[3])
    assert result.mean == pytest.approx(2 / 3)
    np.testing.assert_array_equal(result.details["points"][:3], [[0, 0], [0, 0], [0, 0]])
    assert result.details["class_accuracy"] == {0: 0.5, 1: 1.0}
    # tolerance 0: the maximum itself must be on the object
    strict = PointingGame(model, tolerance=0)(x, targets, maps, masks=masks)
    np.testing.assert_array_equal(strict.scores[:3], [0.0, 0.0, 1.0])
    assert PointingGame(model, tolerance=15.01)(x, targets, maps, masks=masks).scores[0] == 1.0


def test_matches_numpy_reference(framework: str) -> None:
    model = cnn(framework, seed=0)
    rng = np.random.default_rng(3)
    n = 12
    maps = rng.normal(size=(n, 16, 16)).astype(np.float32)
    masks = np.zeros((n, 16, 16), bool)
    for i in range(n):
        y, x = rng.integers(0, 12, 2)
        masks[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    images = to_framework(_images(n, 1), framework)
    targets = rng.integers(0, 4, n)
    for tol in (0, 3, 6.5):
        result = PointingGame(model, tolerance=tol)(images, targets, maps, masks=masks)
        np.testing.assert_array_equal(result.scores, pointing_reference(maps, masks, tol))
    energy = EnergyPointingGame(model)(images, targets, maps, masks=masks)
    positive = np.maximum(maps, 0).astype(np.float64)
    expected = (positive * masks).sum(axis=(1, 2)) / positive.sum(axis=(1, 2))
    np.testing.assert_allclose(energy.scores, expected, rtol=1e-5)


def test_energy_edge_cases(framework: str) -> None:
    model = cnn(framework, seed=0)
    x = to_framework(_images(2), framework)
    maps = np.zeros((2, 16, 16), np.float32)
    maps[1, :8] = 1.0
    masks = np.zeros((2, 16, 16), np.float32)
    masks[:, :4] = 1
    result = EnergyPointingGame(model)(x, [0, 1], maps, masks=masks)
    np.testing.assert_allclose(result.scores, [0.0, 0.5])  # no positive mass scores 0


def test_no_model_call_with_targets(torch: Any) -> None:
    model = cnn("torch", seed=0)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    maps = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    masks = maps > 0.5
    x = to_framework(_images(3), "torch")
    PointingGame(model)(x, [0, 1, 2], maps, masks=masks)
    EnergyPointingGame(model)(x, [0, 1, 2], maps, masks=masks)
    assert calls == []


def test_masks_are_required_and_checked(framework: str) -> None:
    model = cnn(framework, seed=0)
    x = to_framework(_images(2), framework)
    maps = np.ones((2, 16, 16), np.float32)
    with pytest.raises(xt.ExplanationShapeError, match="masks"):
        PointingGame(model)(x, [0, 1], maps)
    with pytest.raises(xt.ExplanationShapeError, match="masks"):
        EnergyPointingGame(model)(x, [0, 1], maps, masks=np.ones((2, 8, 8)))
    with pytest.raises(xt.ParameterError):
        PointingGame(model, tolerance=-1)


def test_first_argmax_is_row_major() -> None:
    maps = np.array([[[0, 2], [2, 1]], [[5, 5], [5, 5]]], dtype=np.float32)
    np.testing.assert_array_equal(first_argmax(maps), [[0, 1], [0, 0]])


def test_twin_models_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=0)
    rng = np.random.default_rng(5)
    maps = rng.random((3, 16, 16), dtype=np.float32)
    masks = rng.random((3, 16, 16)) > 0.8
    images = _images(3, 2)
    for cls in (PointingGame, EnergyPointingGame):
        a = cls(torch_model)(to_framework(images, "torch"), None, maps, masks=masks)
        b = cls(keras_model)(to_framework(images, "tf"), None, maps, masks=masks)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


@pytest.mark.parametrize("cls", [PointingGame, EnergyPointingGame])
def test_contract(cls: type, pytestconfig: pytest.Config) -> None:
    check_metric(cls, masks=True, frameworks=pytestconfig.frameworks)
