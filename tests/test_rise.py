"""RISE: masks against an independent upsample-and-crop, the exact finite sum, and its expectation."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.plugins.rise import RiseMasks

HOST = ep.astensor(np.zeros(1, np.float32))  # builds masks with the NumPy backend
HOST_ADAPTER = xt.adapt(xt.NumpyModel(lambda a: a))


def bilinear(n_in: int, n_out: int) -> np.ndarray:
    """Half-pixel bilinear upsampling matrix with replicated edges, written independently."""
    centre = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    return np.maximum(0.0, 1.0 - np.abs(centre[:, None] - np.arange(n_in)[None]))


def linear_numpy_model(w: np.ndarray, bias: float = 0.0) -> xt.NumpyModel:
    """``f(z) = <w, z> + bias`` on channels-first NumPy images (one output)."""
    flat = w.reshape(-1, 1).astype(np.float64)
    return xt.NumpyModel(lambda b: b.reshape(len(b), -1).astype(np.float64) @ flat + bias, channel_axis=1)


@pytest.mark.parametrize("size", [(8, 8), (10, 7)])
def test_masks_are_cropped_bilinear_upsamplings_of_bernoulli_grids(size: tuple[int, int]) -> None:
    s, p = 3, 0.3
    masks = RiseMasks(seed=5, grid_size=s, probability=p, size=size)
    samples = np.arange(600)
    grids, dy, dx = masks.low_res(samples)
    full = masks.full(HOST_ADAPTER, HOST, samples).numpy()
    cell_h, cell_w = -(-size[0] // s), -(-size[1] // s)
    up_h, up_w = bilinear(s, (s + 1) * cell_h), bilinear(s, (s + 1) * cell_w)
    for n in range(0, 600, 37):
        up = up_h @ grids[n] @ up_w.T
        np.testing.assert_allclose(full[n], up[dy[n] : dy[n] + size[0], dx[n] : dx[n] + size[1]], atol=1e-6)
    assert set(np.unique(grids)) == {0.0, 1.0}
    assert abs(grids.mean() - p) < 0.03  # 5400 Bernoulli(0.3) cells: sd 0.006
    assert set(dy) == set(range(cell_h)) and set(dx) == set(range(cell_w))
    assert full.min() >= 0.0 and full.max() <= 1.0 + 1e-6


def test_mask_of_a_sample_depends_only_on_seed_and_index() -> None:
    a = RiseMasks(seed=3, grid_size=4, probability=0.5, size=(9, 9))
    b = RiseMasks(seed=3, grid_size=4, probability=0.5, size=(9, 9))
    picked = np.array([700, 3, 255, 256, 1999, 0])
    every = b.full(HOST_ADAPTER, HOST, np.arange(2000)).numpy()
    np.testing.assert_array_equal(a.full(HOST_ADAPTER, HOST, picked).numpy(), every[picked])
    other = RiseMasks(seed=4, grid_size=4, probability=0.5, size=(9, 9))
    assert not np.array_equal(other.low_res(picked)[0], a.low_res(picked)[0])


@pytest.mark.parametrize("normalization", ["expectation", "mask_sum"])
@pytest.mark.parametrize("baseline", [0.0, 0.4])
def test_saliency_is_the_score_weighted_mask_sum(normalization: str, baseline: float) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 8, 8))
    x = rng.random((2, 3, 8, 8), dtype=np.float32)

    def model(b: np.ndarray) -> np.ndarray:  # nonlinear, two outputs
        z = b.reshape(len(b), -1).astype(np.float64) @ w.reshape(-1)
        return np.stack([np.tanh(z), z**2 / 10], axis=1)

    n, p = 300, 0.4
    maps = xt.Rise(
        xt.NumpyModel(model, channel_axis=1), nb_samples=n, grid_size=3, preservation_probability=p,
        baseline=baseline, normalization=normalization, seed=11, batch_size=64,
    )(x, [0, 1])
    m = RiseMasks(11, 3, p, (8, 8)).full(HOST_ADAPTER, HOST, np.arange(n)).numpy().astype(np.float64)
    for i, target in enumerate([0, 1]):
        perturbed = x[i][None] * m[:, None] + baseline * (1 - m[:, None])
        scores = model(perturbed)[:, target]
        total = np.einsum("n,nhw->hw", scores, m)
        expected = total / (n * p) if normalization == "expectation" else total / (m.sum(0) + 1e-4)
        np.testing.assert_allclose(maps[i], expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("normalization", ["expectation", "mask_sum"])
def test_linear_model_converges_to_the_exact_expectation(normalization: str) -> None:
    """E[S] for f(z) = <w, z> + b and masks M = A_shift G, G ~ Bernoulli(p) i.i.d. cells.

    With u = w ⊙ (x − β) summed over channels (β the baseline) and rows of A summing to 1,
    E[M_k M_λ | shift] = p² + p(1 − p) <A_k, A_λ>, E[M_λ] = p, hence

        E[S(λ)] = p f(x) + (1 − p) (f(β) + (C u)(λ)),  C(λ, k) = E_shift <A_λ, A_k>.

    For pixel-independent masks C = I, which gives the paper's (1 − p) w ⊙ x + p f(x) (β = b = 0);
    with RISE's smooth masks C is a blur kernel, computed here exactly over the uniform shifts.
    Statistical tolerance: 5 standard errors per pixel, the standard error estimated from the
    N per-mask terms f(x ⊙ M_n) M_n / p.
    """
    size, s, p, n, beta, bias = 6, 3, 0.5, 4000, 0.2, 0.3
    rng = np.random.default_rng(1)
    w = rng.normal(size=(2, size, size))
    x = rng.random((1, 2, size, size), dtype=np.float32)
    model = linear_numpy_model(w, bias)
    maps = xt.Rise(
        model, nb_samples=n, grid_size=s, preservation_probability=p, baseline=beta,
        normalization=normalization, seed=0, batch_size=500,
    )(x, [0])[0].ravel()

    cell = -(-size // s)
    up = bilinear(s, (s + 1) * cell)
    c_axis = np.mean([up[d : d + size] @ up[d : d + size].T for d in range(cell)], axis=0)
    c = np.kron(c_axis, c_axis)                      # C = C_h ⊗ C_w (independent shifts)
    u = (w * (x[0] - beta)).sum(axis=0).ravel()
    f_x, f_beta = float((w * x[0]).sum() + bias), float(w.sum() * beta + bias)
    expected = p * f_x + (1 - p) * (f_beta + c @ u)

    m = RiseMasks(0, s, p, (size, size)).full(HOST_ADAPTER, HOST, np.arange(n)).numpy().reshape(n, -1).astype(np.float64)
    terms = (m @ u + f_beta)[:, None] * m / p
    if normalization == "mask_sum":  # ratio estimator: linearise around its value
        terms = terms - maps[None] * m / p
    stderr = terms.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(maps - expected) <= 5 * stderr), np.max(np.abs(maps - expected) / stderr)
    # the smoothing of the masks matters: the pixel-independent formula is far off
    naive = p * f_x + (1 - p) * (f_beta + u)
    assert np.max(np.abs(maps - naive) / stderr) > 20


def test_one_mask_set_for_all_images_and_seed_control(framework: str) -> None:
    from xai_toolbox.testing import as_numpy, cnn, to_framework

    net = cnn(framework, seed=3)
    image = np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)
    batch = to_framework(np.concatenate([image, image, image]), framework)
    maps = as_numpy(xt.Rise(net, nb_samples=60, grid_size=4, seed=1, batch_size=25)(batch, [2, 2, 2]))
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-6)  # chunks cut at 25, 50, ...
    np.testing.assert_allclose(maps[2], maps[0], rtol=1e-5, atol=1e-6)
    other = as_numpy(xt.Rise(net, nb_samples=60, grid_size=4, seed=2)(batch[:1], [2]))
    assert np.abs(other[0] - maps[0]).max() > 1e-4
    fresh = [as_numpy(xt.Rise(net, nb_samples=30, grid_size=4, seed=None)(batch[:1], [2])) for _ in range(2)]
    assert np.abs(fresh[0] - fresh[1]).max() > 1e-5
