"""Sobol attribution: sampler, replicated design, Jansen estimator (Ishigami, additive model), end to end."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import qmc

import xai_toolbox as xt
from xai_toolbox.ops import resize
from xai_toolbox.plugins.sobol import (
    jansen_total_order,
    replicated_design,
    replicated_rows,
    sobol_design,
)

ISHIGAMI_TOTAL = np.array([0.5576, 0.4424, 0.2437])  # a = 7, b = 0.1


def ishigami(u: np.ndarray, a: float = 7.0, b: float = 0.1) -> np.ndarray:
    x = -np.pi + 2 * np.pi * u
    return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])


def design(n: int, d: int, sampler: str = "sobol", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ab = sobol_design(n, 2 * d, sampler, seed)
    return ab[:, :d], ab[:, d:], replicated_design(ab[:, :d], ab[:, d:])


def test_sobol_design_is_scipys_unscrambled_sequence() -> None:
    ab = sobol_design(16, 6)
    np.testing.assert_array_equal(ab, qmc.Sobol(6, scramble=False).random(16))
    np.testing.assert_array_equal(ab[0], 0.0)  # SciPy's sequence starts at the origin
    with pytest.raises(xt.ParameterError, match="power of two"):
        sobol_design(24, 4)


@pytest.mark.parametrize("sampler", ["scrambled", "random"])
def test_seeded_designs_are_nested_and_reproducible(sampler: str) -> None:
    big = sobol_design(64, 6, sampler, seed=3)
    np.testing.assert_array_equal(sobol_design(16, 6, sampler, seed=3), big[:16])  # prefixes
    assert not np.array_equal(sobol_design(16, 6, sampler, seed=4), big[:16])
    assert big.min() >= 0.0 and big.max() < 1.0
    if sampler == "scrambled":  # still a (0, m, s)-net: each column balanced in 16 strata
        for column in big.T:
            np.testing.assert_array_equal(np.bincount((column * 16).astype(int), minlength=16), 4)


def test_replicated_design_structure() -> None:
    a, b, full = design(8, 5)
    assert full.shape == (8 * 7, 5)
    np.testing.assert_array_equal(full[:8], a)
    np.testing.assert_array_equal(full[8:16], b)
    for i in range(5):
        c = full[16 + 8 * i : 24 + 8 * i]
        np.testing.assert_array_equal(c[:, i], b[:, i])
        np.testing.assert_array_equal(np.delete(c, i, axis=1), np.delete(a, i, axis=1))
    rows = np.array([55, 0, 17, 16, 9, 40])
    np.testing.assert_array_equal(replicated_rows(a, b, rows), full[rows])


def test_jansen_on_ishigami() -> None:
    n = 4096
    _, _, full = design(n, 3)
    y = ishigami(full)
    st = jansen_total_order(y[:n], y[2 * n :], n)
    assert np.abs(st - ISHIGAMI_TOTAL).max() < 1e-3


def additive_indices(coef: np.ndarray) -> np.ndarray:
    return coef**2 / np.sum(coef**2)


def test_jansen_on_additive_masked_model() -> None:
    """f = Σ_j w_j x_j M_j, M_j ~ U[0, 1]: ST_i = (w_i x_i)² / Σ_j (w_j x_j)² exactly."""
    rng = np.random.default_rng(0)
    coef = rng.normal(size=16) * rng.random(16)        # w_j x_j
    n = 1024
    _, _, full = design(n, 16)
    y = full @ coef
    st = jansen_total_order(y[:n], y[2 * n :], n)
    assert np.abs(st - additive_indices(coef)).max() < 2e-3
    # batched leading axes and framework-neutral: a second "image" with other weights
    both = np.stack([y, full @ coef[::-1]])
    st2 = jansen_total_order(both[:, :n], both[:, 2 * n :], n)
    np.testing.assert_allclose(st2[0], st, rtol=1e-12)
    np.testing.assert_allclose(st2[1], st[::-1], atol=3e-3)


def test_constant_output_gives_zero_indices() -> None:
    st = jansen_total_order(np.ones(8), np.ones(8 * 3), 8)
    np.testing.assert_array_equal(st, 0.0)


def linear_numpy(w: np.ndarray) -> xt.NumpyModel:
    flat = w.reshape(-1, 1).astype(np.float64)
    return xt.NumpyModel(lambda b: b.reshape(len(b), -1).astype(np.float64) @ flat, channel_axis=1)


def test_end_to_end_linear_model_with_pixel_cells() -> None:
    """Grid = image size: each pixel is a cell and the map is the grid of indices itself."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 8, 8))
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    n = 64
    maps = xt.SobolAttribution(linear_numpy(w), grid_size=8, nb_design=n, batch_size=512)(x, [0, 0])
    _, _, full = design(n, 64)
    for i in range(2):
        coef = (w * x[i]).sum(axis=0).ravel()
        y = full @ coef
        np.testing.assert_allclose(
            maps[i].ravel(), jansen_total_order(y[:n], y[2 * n :], n), rtol=1e-4, atol=1e-6
        )
        assert np.abs(maps[i].ravel() - additive_indices(coef)).max() < 0.03  # N = 64


@pytest.mark.parametrize("perturbation", ["inpainting", "blurring", "amplitude"])
def test_end_to_end_perturbations_on_a_linear_model(perturbation: str) -> None:
    """Cells of 2×2 pixels on 8×8 images; for a linear model every perturbation is additive in M:

    * inpainting (baseline β): f = Σ_c M_c (a_c − β b_c) + const, a_c = Σ_cell w ⊙ x, b_c = Σ_cell w;
    * blurring: f = Σ_c M_c (a_c − a'_c) + const, a'_c the same sum over the blurred image;
    * amplitude: f(x ⊙ (1 + σ(M − 0.5))) = f(x) + σ Σ_c (M_c − 0.5) a_c.
    The map is the bicubic upsampling of Jansen's estimate on those exact outputs.
    """
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 8, 8))
    x = rng.random((1, 3, 8, 8), dtype=np.float32)
    n, g, beta, sigma = 32, 4, 0.25, 0.8
    params = {"baseline": beta} if perturbation == "inpainting" else {"amplitude_sigma": sigma}
    maps = xt.SobolAttribution(
        linear_numpy(w), grid_size=g, nb_design=n, perturbation=perturbation, batch_size=100, **params
    )(x, [0])

    def cell_sums(values: np.ndarray) -> np.ndarray:  # (8, 8) -> (16,) sums over 2×2 cells
        return values.reshape(g, 2, g, 2).sum(axis=(1, 3)).ravel()

    a = cell_sums((w * x[0]).sum(axis=0))
    if perturbation == "inpainting":
        coef = a - beta * cell_sums(w.sum(axis=0))
    elif perturbation == "blurring":  # 10×10 box filter, replicated edges, window i-5 .. i+4
        blurred = ndimage.uniform_filter(x[0].astype(np.float64), size=(1, 10, 10), mode="nearest")
        coef = a - cell_sums((w * blurred).sum(axis=0))
    else:
        coef = sigma * a
    _, _, full = design(n, g * g)
    y = full @ coef
    grid = jansen_total_order(y[:n], y[2 * n :], n).reshape(1, g, g).astype(np.float32)
    expected = resize(ep.astensor(grid), (8, 8), "bicubic").numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)


def test_scrambled_design_end_to_end_matches_the_estimator_and_the_exact_indices() -> None:
    """``sampler="scrambled"`` on a linear model with pixel cells: the map is Jansen's estimate
    on the seeded scrambled design; a seed repeats it, another seed gives another estimate."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 8, 8))
    x = rng.random((1, 3, 8, 8), dtype=np.float32)
    n = 64
    model = linear_numpy(w)

    def explain(seed: int) -> np.ndarray:
        method = xt.SobolAttribution(model, grid_size=8, nb_design=n, sampler="scrambled", seed=seed)
        return method(x, [0])[0].ravel()

    _, _, full = design(n, 64, "scrambled", seed=7)
    coef = (w * x[0]).sum(axis=0).ravel()
    y = full @ coef
    np.testing.assert_allclose(explain(7), jansen_total_order(y[:n], y[2 * n :], n), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(explain(7), explain(7))
    assert not np.allclose(explain(8), explain(7))
    assert np.abs(explain(8) - additive_indices(coef)).max() < 0.03


def test_sobol_is_deterministic_and_counts_forward_passes() -> None:
    calls: list[int] = []
    w = np.random.default_rng(3).normal(size=(3 * 8 * 8, 2))

    def model(b: np.ndarray) -> np.ndarray:
        calls.append(len(b))
        return np.tanh(b.reshape(len(b), -1) @ w)

    x = np.random.default_rng(4).random((2, 8, 8, 3), dtype=np.float32)
    explainer = xt.SobolAttribution(model, grid_size=4, nb_design=8, batch_size=50)
    first = explainer(x, [0, 1])
    assert calls[0] == 1  # the engine's probe of the output width (NumPy callables)
    assert sum(calls[1:]) == 2 * 8 * (16 + 1)  # N (d + 1) forward passes per image (B unused)
    assert max(calls) <= 50
    np.testing.assert_array_equal(explainer(x, [0, 1]), first)


def test_two_unscrambled_points_are_refused_and_scrambled_ones_are_not() -> None:
    """The unscrambled sequence starts with two constant points (all 0, all 0.5): with
    ``nb_design=2`` no cell is ever resampled and every index would be 0, so it is refused;
    scrambled points differ between A and B, and give a map."""
    model = linear_numpy(np.random.default_rng(0).normal(size=(3, 8, 8)))
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    ab = sobol_design(2, 2 * 16)
    np.testing.assert_array_equal(ab[:, :16], ab[:, 16:])  # why: A and B agree on every cell
    with pytest.raises(xt.ParameterError, match="nb_design=2 of the unscrambled"):
        xt.SobolAttribution(model, grid_size=4, nb_design=2)
    scrambled = xt.SobolAttribution(model, grid_size=4, nb_design=2, sampler="scrambled")(x, [0])
    assert np.abs(scrambled).max() > 0
    assert np.abs(xt.SobolAttribution(model, grid_size=4, nb_design=4)(x, [0])).max() > 0
