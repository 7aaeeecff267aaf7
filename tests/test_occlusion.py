"""Occlusion: parity with Captum, a brute-force reference, linear models, tabular and series inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, cnn, linear_model, to_framework


def brute_force(fn, x: np.ndarray, target: int, patch: tuple[int, ...], stride: tuple[int, ...],
                baseline: float, channel_axis: int | None) -> np.ndarray:
    """Mean score drop over the windows covering each position, one window at a time.

    ``x``: one input; ``channel_axis``: axis of ``x`` that windows span entirely (None: none).
    Starts every ``stride`` from 0 until the axis is covered, the last window cut at the border.
    """
    positions = x.shape if channel_axis is None else tuple(d for i, d in enumerate(x.shape) if i != channel_axis)
    total, count = np.zeros(positions), np.zeros(positions)
    base = fn(x[None])[0, target]
    starts = [range(0, (math.ceil((n - p) / s) + 1) * s, s) for n, p, s in zip(positions, patch, stride, strict=True)]
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(positions)):
        window = np.zeros(positions, bool)
        window[tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))] = True
        full = window if channel_axis is None else np.expand_dims(window, channel_axis)
        occluded = np.where(full, baseline, x)
        total += window * (base - fn(occluded[None])[0, target])
        count += window
    return total / count


@pytest.mark.parametrize(
    ("patch", "stride"), [(4, 2), (3, 2), ((5, 3), (2, 3)), (10, 1), (1, 1), ((10, 2), (1, 2))]
)
def test_parity_with_captum(torch, patch, stride) -> None:
    captum = pytest.importorskip("captum.attr")
    net = cnn("torch", seed=2)
    images = torch.from_numpy(np.random.default_rng(0).random((3, 3, 10, 10), dtype=np.float32))
    targets = [0, 1, 3]
    ours = as_numpy(xt.Occlusion(net, patch_size=patch, stride=stride, baseline=0.3, batch_size=13)(images, targets))
    window = (patch, patch) if isinstance(patch, int) else patch
    step = (stride, stride) if isinstance(stride, int) else stride
    theirs = captum.Occlusion(net).attribute(
        images, sliding_window_shapes=(3, *window), strides=(3, *step), baselines=0.3, target=targets,
        perturbations_per_eval=32,
    )
    theirs = theirs.detach().numpy()
    np.testing.assert_allclose(theirs[:, 0], theirs[:, 2])  # windows span all channels
    np.testing.assert_allclose(ours, theirs[:, 0], rtol=1e-5, atol=1e-7)


def test_linear_model_with_unit_patches_is_gradient_times_input(framework: str) -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    x = rng.random((2, 3, 6, 5), dtype=np.float32)
    model = linear_model(framework, w)
    maps = as_numpy(xt.Occlusion(model, patch_size=1, stride=1, baseline=0.5)(to_framework(x, framework), [2, 0]))
    np.testing.assert_allclose(maps[0], (w[2] * (x[0] - 0.5)).sum(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps[1], (w[0] * (x[1] - 0.5)).sum(axis=0), rtol=1e-4, atol=1e-5)


def nonlinear(weights: np.ndarray):
    def fn(batch: np.ndarray) -> np.ndarray:
        z = batch.reshape(len(batch), -1).astype(np.float64) @ weights
        return np.tanh(z) + 0.1 * z**2

    return fn


@pytest.mark.parametrize(("patch", "stride"), [((3, 2), (2, 1)), (4, 3), ((7, 1), 1)])
def test_images_match_brute_force_with_a_numpy_callable(patch, stride) -> None:
    rng = np.random.default_rng(2)
    x = rng.random((2, 7, 9, 3), dtype=np.float32)  # channels last: a bare callable's layout
    fn = nonlinear(rng.normal(size=(7 * 9 * 3, 3)) / 10)
    maps = xt.Occlusion(fn, patch_size=patch, stride=stride, baseline=-0.2, batch_size=10)(x, [1, 2])
    window = (patch, patch) if isinstance(patch, int) else patch
    step = (stride, stride) if isinstance(stride, int) else stride
    for i, target in enumerate([1, 2]):
        expected = brute_force(fn, x[i], target, window, step, -0.2, channel_axis=2)
        np.testing.assert_allclose(maps[i], expected, rtol=1e-4, atol=1e-6)


def test_tabular_logistic_regression_and_series() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 10)).astype(np.float32)
    labels = (features[:, 2] - 2 * features[:, 7] > 0).astype(int)
    clf = LogisticRegression().fit(features, labels)
    model = lambda b: clf.decision_function(b)  # noqa: E731  (N,) logit of class 1
    x = features[:4]
    maps = xt.Occlusion(model, patch_size=1, stride=1)(x, [0, 0, 0, 0])
    np.testing.assert_allclose(maps, clf.coef_[0] * x, rtol=1e-5, atol=1e-6)  # exact contributions
    wide = xt.Occlusion(model, patch_size=3, stride=2)(x, [0, 0, 0, 0])
    expected = brute_force(lambda b: model(b)[:, None], x[1], 0, (3,), (2,), 0.0, channel_axis=None)
    np.testing.assert_allclose(wide[1], expected, rtol=1e-5, atol=1e-6)

    series = rng.random((2, 12, 2), dtype=np.float32)  # (N, T, C), channels last
    fn = nonlinear(rng.normal(size=(24, 2)) / 5)
    maps = xt.Occlusion(fn, patch_size=4, stride=3, baseline=0.1)(series, [0, 1])
    assert maps.shape == (2, 12)
    expected = brute_force(fn, series[1], 1, (4,), (3,), 0.1, channel_axis=1)
    np.testing.assert_allclose(maps[1], expected, rtol=1e-4, atol=1e-6)
