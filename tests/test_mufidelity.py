"""MuFidelity: exactness on a linear model, a NumPy reference, twins, seeds and streaming."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _shared import outputs_of
from scipy import stats

import xai_toolbox as xt
from xai_toolbox.metrics.mufidelity import MuFidelity, rowwise_correlation
from xai_toolbox.testing import as_numpy, check_metric, cnn, linear_model, to_framework, twin_cnn


def mufidelity_reference(
    model: Any, framework: str, images: np.ndarray, maps: np.ndarray, targets: np.ndarray, *,
    grid: int, p: float, samples: int, seed: int, baseline: float, correlation: str,
) -> np.ndarray:
    """Xplique's algorithm in NumPy: Bernoulli cells on a grid, nearest upsampling, correlation."""
    n, _, h, w = images.shape
    keep_cells = np.random.default_rng(seed).random((samples, grid, grid)) > p
    rows = np.minimum(((np.arange(h) + 0.5) * grid / h).astype(int), grid - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * grid / w).astype(int), grid - 1)
    keep = keep_cells[:, rows][:, :, cols].astype(np.float64)  # (S, H, W)
    scores = []
    for i in range(n):
        base = outputs_of(model, framework, images[i : i + 1])[0, targets[i]]
        perturbed = images[i][None] * keep[:, None] + (1 - keep[:, None]) * baseline
        pred = base - outputs_of(model, framework, perturbed)[:, targets[i]]
        attr = (maps[i][None] * (1 - keep)).sum(axis=(1, 2))
        corr = (stats.spearmanr if correlation == "spearman" else stats.pearsonr)(pred, attr)[0]
        scores.append(0.0 if np.isnan(corr) else corr)
    return np.array(scores)


def _images(n: int = 3, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


@pytest.mark.parametrize("correlation", ["pearson", "spearman"])
def test_gradient_input_on_linear_model_is_one(framework: str, correlation: str) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 3, 12, 12)).astype(np.float32)
    images = rng.random((2, 3, 12, 12), dtype=np.float32)
    model, targets = linear_model(framework, weight), np.array([1, 2])
    x = to_framework(images, framework)
    phi = xt.method("gradient_input", model)(x, targets)
    result = MuFidelity(model, grid_size=6, nb_samples=60, correlation=correlation)(x, targets, phi)
    np.testing.assert_allclose(result.scores, 1.0, atol=1e-6)
    # the drops are the attribution sums themselves
    np.testing.assert_allclose(result.details["drops"], result.details["attributions"], rtol=1e-4, atol=1e-4)


def test_tabular_linear_model_is_one(framework: str) -> None:
    rng = np.random.default_rng(1)
    model = linear_model(framework, rng.normal(size=(2, 10)).astype(np.float32))
    rows = rng.random((4, 10), dtype=np.float32)
    phi = as_numpy(xt.method("gradient_input", model)(rows, [0, 1, 1, 0]))
    result = MuFidelity(model, nb_samples=40)(rows, [0, 1, 1, 0], phi)
    np.testing.assert_allclose(result.scores, 1.0, atol=1e-6)


@pytest.mark.parametrize("correlation", ["spearman", "pearson"])
def test_matches_numpy_reference(framework: str, correlation: str) -> None:
    model = cnn(framework, seed=4)
    images, targets = _images(), np.array([3, 0, 1])
    maps = np.random.default_rng(8).normal(size=(3, 16, 16)).astype(np.float32)
    params = {"grid": 5, "p": 0.3, "samples": 24, "seed": 11, "baseline": 0.25}
    result = MuFidelity(
        model, grid_size=5, subset_percent=0.3, nb_samples=24, seed=11, baseline=0.25,
        correlation=correlation, batch_size=10,
    )(to_framework(images, framework), targets, maps)
    expected = mufidelity_reference(model, framework, images, maps, targets, correlation=correlation, **params)
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)


def test_xplique_defaults() -> None:
    metric = MuFidelity(None)
    assert (metric.grid_size, metric.subset_percent, metric.nb_samples, metric.baseline) == (9, 0.2, 200, 0.0)
    assert metric.correlation == "pearson"  # the paper's; Xplique's is correlation="spearman"


def test_twin_models_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=5)
    images, targets = _images(3, seed=2), np.array([2, 1, 0])
    maps = np.random.default_rng(1).random((3, 16, 16), dtype=np.float32)
    for correlation in ("pearson", "spearman"):
        params = {"nb_samples": 30, "seed": 3, "correlation": correlation}
        a = MuFidelity(torch_model, **params)(to_framework(images, "torch"), targets, maps)
        b = MuFidelity(keras_model, **params)(to_framework(images, "tf"), targets, maps)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_seed_batch_size_and_batch_composition(framework: str) -> None:
    model = cnn(framework, seed=0)
    images, targets = _images(3), np.array([0, 1, 2])
    maps = np.random.default_rng(3).random((3, 16, 16), dtype=np.float32)
    x = to_framework(images, framework)
    base = MuFidelity(model, nb_samples=20, seed=7, batch_size=64)(x, targets, maps)
    for b in (1, 7):
        again = MuFidelity(model, nb_samples=20, seed=7, batch_size=b)(x, targets, maps)
        np.testing.assert_allclose(again.scores, base.scores, atol=1e-6)
    # the same subsets serve every input: one input alone scores as inside the batch
    alone = MuFidelity(model, nb_samples=20, seed=7)(to_framework(images[1:2], framework), targets[1:2], maps[1:2])
    np.testing.assert_allclose(alone.scores, base.scores[1:2], atol=1e-6)
    other = MuFidelity(model, nb_samples=20, seed=8)(x, targets, maps)
    assert not np.allclose(other.scores, base.scores)


def test_rowwise_correlation_matches_scipy_and_handles_constants() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    b[1] = np.round(b[1])  # ties
    np.testing.assert_allclose(
        rowwise_correlation(a, b, "spearman"), [stats.spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]
    )
    np.testing.assert_allclose(
        rowwise_correlation(a, b, "pearson"), [stats.pearsonr(x, y)[0] for x, y in zip(a, b, strict=True)]
    )
    assert rowwise_correlation(np.ones((1, 5)), a[:1, :5])[0] == 0.0


def test_contract(pytestconfig: pytest.Config) -> None:
    check_metric(MuFidelity, {"nb_samples": 12, "seed": 1}, frameworks=pytestconfig.frameworks)


def test_bad_parameters() -> None:
    for kwargs in ({"nb_samples": 1}, {"subset_percent": 1.0}, {"grid_size": 0},
                   {"correlation": "kendall"}, {"seed": 1.5}, {"baseline": "blur"}):
        with pytest.raises(xt.ParameterError):
            MuFidelity(None, **kwargs)
