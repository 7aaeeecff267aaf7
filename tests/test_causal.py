"""Deletion and Insertion: analytic curves on a linear model, a NumPy reference, twins, streaming."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _shared import outputs_of

import xai_toolbox as xt
from xai_toolbox.metrics.causal import Deletion, Insertion, descending_ranks
from xai_toolbox.testing import as_numpy, check_metric, cnn, linear_model, to_framework, twin_cnn


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def blur_reference(images: np.ndarray) -> np.ndarray:
    """RISE's substrate: separable Gaussian (11 taps, sigma 5), zero padding, per channel."""
    taps = np.exp(-0.5 * (np.arange(-5, 6) / 5.0) ** 2)
    taps /= taps.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, taps, mode="same"), 2, images)
    return np.apply_along_axis(lambda c: np.convolve(c, taps, mode="same"), 3, rows)


def causal_reference(
    model: Any, framework: str, images: np.ndarray, maps: np.ndarray, targets: np.ndarray, *,
    deletion: bool, steps: int = 10, substrate: np.ndarray | None = None, probs: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Curves and AUCs built pixel by pixel in NumPy (Xplique's points: truncated linspace)."""
    n, _, h, w = images.shape
    substrate = np.zeros_like(images) if substrate is None else substrate
    counts = np.floor(np.linspace(0, h * w, steps + 1) + 1e-9).astype(int)
    curves = np.zeros((n, steps + 1))
    for i in range(n):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        batch = []
        for k in counts:
            chosen = np.zeros(h * w, bool)
            chosen[order[:k]] = True
            chosen = chosen.reshape(h, w)
            if deletion:
                batch.append(np.where(chosen, substrate[i], images[i]))
            else:
                batch.append(np.where(chosen, images[i], substrate[i]))
        out = outputs_of(model, framework, np.stack(batch))
        out = softmax(out) if probs else out
        curves[i] = out[:, targets[i]]
    aucs = np.array([np.trapezoid(c, dx=1.0 / steps) for c in curves])
    return curves, aucs


def _images(n: int = 3, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


# -- analytic: a linear model explained by gradient × input -------------------------------------
def test_linear_deletion_is_the_sorted_cumulative_curve(framework: str) -> None:
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    images = rng.random((2, 3, 8, 8), dtype=np.float32)
    model, targets = linear_model(framework, weight), np.array([2, 0])
    x = to_framework(images, framework)
    phi = as_numpy(xt.method("gradient_input", model)(x, targets))

    deletion = xt.metric("deletion", model)(x, targets, phi)
    insertion = xt.metric("insertion", model)(x, targets, phi)

    counts = np.floor(np.linspace(0, 64, 11) + 1e-9).astype(int)
    for i in range(2):
        contributions = np.sort(phi[i].ravel())[::-1].astype(np.float64)
        removed = np.concatenate([[0.0], np.cumsum(contributions)])[counts]
        total = contributions.sum()
        np.testing.assert_allclose(deletion.curves[i], total - removed, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(insertion.curves[i], removed, rtol=1e-5, atol=1e-4)
        expected_auc = np.trapezoid(total - removed, dx=0.1)
        assert deletion.scores[i] == pytest.approx(expected_auc, rel=1e-5, abs=1e-4)
    np.testing.assert_array_equal(deletion.details["perturbed"], counts)

    # the reversed ranking removes the least useful positions first: worse on both metrics
    worse_del = xt.metric("deletion", model)(x, targets, -phi)
    worse_ins = xt.metric("insertion", model)(x, targets, -phi)
    assert np.all(worse_del.scores > deletion.scores)
    assert np.all(worse_ins.scores < insertion.scores)
    assert deletion.higher_is_better is False and insertion.higher_is_better is True


# -- NumPy reference on the test CNN ----------------------------------------------------------------
def test_matches_numpy_reference_xplique_settings(framework: str) -> None:
    model = cnn(framework, seed=3)
    images, maps, targets = _images(), np.random.default_rng(9).random((3, 16, 16)), np.array([1, 0, 3])
    # coarse map values create ties: the stable descending order must be the one used
    maps = np.round(maps * 4).astype(np.float32)
    x = to_framework(images, framework)
    for cls, deleting in ((Deletion, True), (Insertion, False)):
        result = cls(model, batch_size=7)(x, targets, maps)
        curves, aucs = causal_reference(model, framework, images, maps, targets, deletion=deleting)
        np.testing.assert_allclose(result.curves, curves, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.scores, aucs, rtol=1e-5, atol=1e-5)


def test_matches_numpy_reference_rise_settings(framework: str) -> None:
    """RISE: softmax probabilities, blurred insertion substrate, a step in pixels."""
    model = cnn(framework, seed=1)
    images, maps, targets = _images(2, seed=5), np.random.default_rng(2).random((2, 16, 16)), np.array([0, 2])
    x = to_framework(images, framework)
    result = Insertion(model, baseline="blur", activation="softmax", step_pixels=32)(x, targets, maps)
    curves, aucs = causal_reference(
        model, framework, images, maps, targets, deletion=False, steps=8,
        substrate=blur_reference(images), probs=True,
    )
    np.testing.assert_allclose(result.curves, curves, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.scores, aucs, rtol=1e-5, atol=1e-6)


def test_step_pixels_and_max_percentage_counts() -> None:
    assert list(Deletion(None, step_pixels=100).perturbed_counts(256)) == [0, 100, 200, 256]
    assert list(Deletion(None, steps=4, max_percentage_perturbed=0.5).perturbed_counts(256)) == [0, 32, 64, 96, 128]
    # Xplique truncates linspace: 10 steps of 250 positions
    assert list(Deletion(None).perturbed_counts(250)) == [0, 25, 50, 75, 100, 125, 150, 175, 200, 225, 250]


def test_descending_ranks_break_ties_by_position() -> None:
    ranks = descending_ranks(np.array([[[0.5, 0.1], [0.5, 0.9]], [[1.0, 1.0], [1.0, 1.0]]]))
    np.testing.assert_array_equal(ranks[0], [[1, 3], [2, 0]])
    np.testing.assert_array_equal(ranks[1], [[0, 1], [2, 3]])


# -- frameworks, streaming, contract -------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"baseline": "blur", "activation": "softmax", "steps": 6}])
def test_twin_models_agree(both: None, params: dict) -> None:
    torch_model, keras_model = twin_cnn(seed=2)
    images, targets = _images(3, seed=1), np.array([0, 3, 1])
    maps = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    for cls in (Deletion, Insertion):
        a = cls(torch_model, **params)(to_framework(images, "torch"), targets, maps)
        b = cls(keras_model, **params)(to_framework(images, "tf"), targets, maps)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.curves, b.curves, atol=1e-4)


def test_batch_size_invariance(framework: str) -> None:
    model = cnn(framework, seed=0)
    images, targets = _images(3), np.array([0, 1, 2])
    maps = np.random.default_rng(3).random((3, 16, 16), dtype=np.float32)
    x = to_framework(images, framework)
    results = [Deletion(model, steps=5, batch_size=b)(x, targets, maps) for b in (1, 4, 18, 64)]
    for r in results[1:]:
        np.testing.assert_allclose(r.curves, results[0].curves, atol=1e-6)


def test_forward_passes_are_bounded_by_batch_size(torch: Any) -> None:
    model = cnn("torch", seed=0)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    images = _images(5)
    maps = np.random.default_rng(3).random((5, 16, 16), dtype=np.float32)
    Deletion(model, steps=10, batch_size=8)(to_framework(images, "torch"), np.arange(5) % 4, maps)
    assert max(sizes) <= 8
    assert sum(sizes) == 5 * 11  # every (image, step) pair exactly once, chunks across images


@pytest.mark.parametrize("cls", [Deletion, Insertion])
def test_contract(cls: type, pytestconfig: pytest.Config) -> None:
    check_metric(cls, {"steps": 4}, frameworks=pytestconfig.frameworks)


def test_bad_parameters_fail_early() -> None:
    for kwargs in ({"steps": 0}, {"baseline": "noise"}, {"max_percentage_perturbed": 0.0},
                   {"activation": "relu"}, {"step_pixels": -2}, {"baseline": float("nan")}):
        with pytest.raises(xt.ParameterError):
            Deletion(None, **kwargs)


def test_blur_needs_images(framework: str) -> None:
    model = linear_model(framework, np.ones((2, 5), np.float32))
    rows = np.random.default_rng(0).random((3, 5), dtype=np.float32)
    with pytest.raises(xt.ParameterError, match="blur"):
        Insertion(model, baseline="blur")(rows, [0, 1, 0], rows)
    # numbers work on tabular rows: deleting every feature of a linear model leaves 0
    result = Deletion(model, steps=5)(rows, [0, 1, 0], rows)
    np.testing.assert_allclose(result.curves[:, -1], 0.0, atol=1e-6)
    np.testing.assert_allclose(result.curves[:, 0], rows.sum(axis=1), rtol=1e-5)


def test_numpy_callable_models() -> None:
    """Black-box metrics need forward passes only: a plain NumPy callable works (NCHW here)."""
    rng = np.random.default_rng(6)
    weight = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    model = xt.NumpyModel(lambda a: a.reshape(len(a), -1) @ weight.reshape(2, -1).T, channel_axis=1)
    images = rng.random((2, 3, 4, 4), dtype=np.float32)
    phi = (weight[[1, 0]] * images).sum(axis=1)  # exact contributions to the targets' scores
    result = Deletion(model, steps=16)(images, [1, 0], phi)
    for i in range(2):
        removed = np.concatenate([[0.0], np.cumsum(np.sort(phi[i].ravel())[::-1])])
        np.testing.assert_allclose(result.curves[i], phi[i].sum() - removed, rtol=1e-5, atol=1e-5)
