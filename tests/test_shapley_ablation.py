"""Shapley Value Sampling and Feature Ablation: parity with Captum (same segments, same
permutations), a NumPy reference of the sampling estimator, efficiency, and convergence to the
exact Shapley values. (Contract, twins, batch size, additive models: tests/test_surrogates.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from _shared import exact_shapley, relative_error

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.testing import as_numpy, cnn


@pytest.fixture
def captum_case(torch):
    ca = pytest.importorskip("captum.attr")
    net = cnn("torch", seed=2)
    images = torch.from_numpy(np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32))
    return ca, net, images, [0, 1, 3]


def _irregular_labels() -> np.ndarray:
    """Segments of uneven shapes and sizes, labels with gaps (as superpixels give)."""
    rng = np.random.default_rng(9)
    return np.kron(rng.integers(0, 6, (4, 4)), np.ones((4, 4), int)) * 3 + 2


@pytest.mark.parametrize(("grid", "baseline"), [(4, 0.3), (8, 0.0), (None, -0.5)])
def test_feature_ablation_parity_with_captum(torch, captum_case, grid: int | None, baseline: float) -> None:
    ca, net, images, targets = captum_case
    labels = xe.grid_labels((16, 16), grid) if grid else _irregular_labels()
    ours = as_numpy(xt.FeatureAblation(net, segmentation=labels, baseline=baseline, batch_size=13)(images, targets))
    theirs = ca.FeatureAblation(net).attribute(
        images, baselines=baseline, target=targets, feature_mask=torch.from_numpy(labels)[None, None],
        perturbations_per_eval=8,
    ).numpy()
    np.testing.assert_allclose(theirs[:, 0], theirs[:, 2])  # segments span all channels
    assert relative_error(ours, theirs[:, 0]) <= 1e-5  # measured 0 (same float32 passes)


@pytest.mark.parametrize("labels", ["grid", "irregular"])
def test_shapley_value_sampling_parity_with_captum_on_the_same_permutations(torch, captum_case, labels: str) -> None:
    from xai_toolbox.plugins.shapley import permutations
    from xai_toolbox.plugins.surrogates import item_generators

    ca, net, images, targets = captum_case
    mask = xe.grid_labels((16, 16), 4) if labels == "grid" else _irregular_labels()
    _, compact = np.unique(mask, return_inverse=True)  # Captum wants labels 0 .. M − 1
    compact = compact.reshape(mask.shape)
    m, s = int(compact.max()) + 1, 4
    ours = as_numpy(xt.ShapleyValueSampling(net, segmentation=mask, nb_samples=s, baseline=0.3, seed=5, batch_size=13)(images, targets))
    rngs = item_generators(5, 3)
    for i in range(3):
        order = permutations(rngs[i], m, s)
        peer = ca.ShapleyValueSampling(net)
        peer.permutation_generator = lambda _m, _n, order=order: ([int(j) for j in row] for row in order)
        theirs = peer.attribute(images[i : i + 1], baselines=0.3, target=targets[i], n_samples=s,
                                feature_mask=torch.from_numpy(compact)[None, None], perturbations_per_eval=8)
        assert relative_error(ours[i], theirs[0, 0].numpy()) <= 1e-5  # measured ≤ 1.2e-6


def test_shapley_value_sampling_matches_a_numpy_reference() -> None:
    rng = np.random.default_rng(10)
    x = rng.random((2, 6), dtype=np.float32)
    weights = rng.normal(size=(6, 2))

    def model(b: np.ndarray) -> np.ndarray:
        h = b.astype(np.float64) @ weights
        return np.stack([h[:, 0] * h[:, 1], np.sin(h[:, 0])], axis=1)

    s, seed, baseline = 7, 3, 0.4
    maps, extras = xt.ShapleyValueSampling(model, nb_samples=s, seed=seed, baseline=baseline).explain_with_extras(x, [0, 1])
    for i, target in enumerate([0, 1]):
        f = lambda z, i=i, target=target: model(np.where(z == 1, x[i], baseline)[None].astype(np.float32))[0, target]  # noqa: E731
        draw = np.random.default_rng(xe.item_seed(seed, i))  # the documented permutations
        orders = np.argsort(draw.random((s, 6)), axis=1)
        phi = np.zeros(6)
        for order in orders:
            z = np.zeros(6, int)
            for j in order:
                before = f(z)
                z[j] = 1
                phi[j] += f(z) - before
        np.testing.assert_allclose(maps[i], phi / s, rtol=1e-5, atol=1e-6)
        # efficient for any number of permutations
        assert maps[i].sum() == pytest.approx(f(np.ones(6)) - f(np.zeros(6)), rel=1e-5)
        assert extras["base_value"][i] == pytest.approx(f(np.zeros(6)), rel=1e-6)


def test_shapley_value_sampling_converges_to_the_exact_values() -> None:
    """Each permutation gives an unbiased estimate: the mean of 3000 is within 4 standard
    errors of the exact Shapley values (standard errors from the permutations' spread)."""
    rng = np.random.default_rng(11)
    x = rng.random((1, 4), dtype=np.float32)
    weights = rng.normal(size=(4, 2))

    def model(b: np.ndarray) -> np.ndarray:
        h = b.astype(np.float64) @ weights
        return (np.tanh(h[:, 0]) * h[:, 1])[:, None]

    f = lambda z: model(np.where(z == 1, x[0], 0.0)[None].astype(np.float32))[0, 0]  # noqa: E731
    exact = exact_shapley(f, 4)
    many = xt.ShapleyValueSampling(model, nb_samples=3000, seed=0, batch_size=4096)(x, [0])[0]
    single = np.stack([xt.ShapleyValueSampling(model, nb_samples=1, seed=k)(x, [0])[0] for k in range(200)])
    stderr = single.std(axis=0) / np.sqrt(3000)
    assert np.all(np.abs(many - exact) <= 4 * stderr + 1e-6), (many, exact, stderr)
