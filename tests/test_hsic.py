"""HSIC attribution: design, median heuristic, estimator against the trace formula, end to end."""

from __future__ import annotations

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.plugins.hsic import (
    hsic_design,
    hsic_scores,
    median_pairwise_distance,
    orthogonal_array,
    orthogonal_block,
    output_bandwidth,
)


def trace_hsic(x: np.ndarray, y: np.ndarray, width: float, kernel: str) -> np.ndarray:
    """tr(K H L H) / (n − 1)² with full n × n matrices, one cell at a time (the definition)."""
    n = len(y)
    h = np.eye(n) - 1.0 / n
    lc = h @ np.exp(-((y[:, None] - y[None, :]) ** 2) / (2 * width**2)) @ h
    out = []
    for i in range(x.shape[1]):
        xi = x[:, i]
        if kernel == "dirac":
            k = (xi[:, None] == xi[None, :]).astype(float)
        else:  # the official code's modified Dirac kernel 1 + (0.5 − (x − x')²)
            k = 1.0 + 0.5 - (xi[:, None] - xi[None, :]) ** 2
        out.append(np.trace(k @ lc) / (n - 1) ** 2)
    return np.array(out)


@pytest.mark.parametrize("kernel", ["dirac", "official"])
def test_estimator_equals_the_trace_formula(kernel: str) -> None:
    rng = np.random.default_rng(0)
    x = hsic_design(150, 9, "random", seed=1).astype(np.float64)
    y = np.sin(3 * x[:, 2]) + x[:, 5] * x[:, 7] + 0.1 * rng.normal(size=150)
    z = x - x.mean(axis=0)
    expected = trace_hsic(x, y, 0.6, kernel)
    np.testing.assert_allclose(hsic_scores(z, y, 0.6), expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(hsic_scores(z, y, 0.6, block=7 * 150 + 3), expected, rtol=1e-10, atol=1e-14)
    assert set(np.argsort(expected)[-3:]) == {2, 5, 7}


@pytest.mark.parametrize("n", [2, 3, 40, 41])
def test_median_pairwise_distance_is_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    for y in (rng.normal(size=n), rng.integers(0, 4, size=n).astype(float)):
        brute = np.median(np.abs(y[:, None] - y[None, :])[np.triu_indices(n, 1)])
        assert median_pairwise_distance(y) == pytest.approx(brute, rel=1e-12, abs=1e-15)


def test_bandwidth_choices_and_degenerate_outputs() -> None:
    y = np.array([-3.0, -1.0, -2.0, 4.0])
    assert output_bandwidth(y, "median_output") == 1.5
    assert output_bandwidth(y, 0.7) == 0.7
    assert output_bandwidth(y, "median_heuristic") == median_pairwise_distance(y)
    with pytest.warns(RuntimeWarning, match="median of the outputs is 0"):
        assert output_bandwidth(np.array([-1.0, 0.0, 0.0, 2.0]), "median_output") > 0
    assert output_bandwidth(np.array([1.0, 1.0, 1.0, 1.0, 5.0]), "median_heuristic") == 4.0  # spread
    assert output_bandwidth(np.ones(5), "median_heuristic") == 1.0


def test_designs_are_binary_balanced_and_seeded() -> None:
    lhs = hsic_design(100, 12, "lhs", seed=3)
    assert lhs.shape == (100, 12) and set(np.unique(lhs)) == {0.0, 1.0}
    np.testing.assert_array_equal(lhs.sum(axis=0), 50)  # one stratum per point: exact balance
    np.testing.assert_array_equal(lhs, hsic_design(100, 12, "lhs", seed=3))
    assert not np.array_equal(lhs, hsic_design(100, 12, "lhs", seed=4))
    sobol = hsic_design(64, 5, "sobol", seed=0)
    np.testing.assert_array_equal(sobol, hsic_design(64, 5, "sobol", seed=9))  # deterministic
    assert sobol[0].tolist() == [1.0] * 5  # the sequence without its origin starts at 0.5
    assert abs(hsic_design(4000, 4, "random", seed=0).mean() - 0.5) < 0.02


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 16, 64])
def test_orthogonal_blocks_are_strength_three_arrays(dim: int) -> None:
    block = orthogonal_array(dim, np.random.default_rng(dim))
    rows = orthogonal_block(dim)
    assert block.shape == (rows, dim) and rows >= 2 * dim and set(np.unique(block)) <= {0, 1}
    s = 2.0 * block - 1.0
    # every product of one, two or three distinct columns sums to zero: each cell, pair and
    # triple of cells takes all its value combinations equally often
    np.testing.assert_array_equal(s.sum(axis=0), 0)
    np.testing.assert_array_equal(s.T @ s, rows * np.eye(dim))
    if dim >= 3:
        np.testing.assert_array_equal(np.einsum("ni,nj,nk->ijk", s, s, s), 0)


def test_orthogonal_design_is_seeded_nested_and_fair_per_mask() -> None:
    design = hsic_design(300, 64, "orthogonal", seed=3)
    assert design.shape == (300, 64) and design.dtype == np.float32
    np.testing.assert_array_equal(design[:256], hsic_design(256, 64, "orthogonal", seed=3))
    assert not np.array_equal(design, hsic_design(300, 64, "orthogonal", seed=4))
    assert not np.array_equal(design[:128], design[128:256])  # each block its own draw
    # the random shift and row order give every mask the law of independent fair cells:
    # over many seeds, the first mask's cells are kept half of the time and uncorrelated
    first = np.stack([hsic_design(4, 16, "orthogonal", seed=k)[0] for k in range(2000)])
    assert np.abs(first.mean(axis=0) - 0.5).max() < 0.05
    corr = np.corrcoef(first.T) - np.eye(16)
    assert np.abs(corr).max() < 0.1
    # and the law is uniform on all 2^64 masks, not on one block's 128 codewords: no repeats
    wide = {hsic_design(4, 64, "orthogonal", seed=k)[0].tobytes() for k in range(2000)}
    assert len(wide) == 2000


def two_cell_model(size: int, a: tuple[int, int], b: tuple[int, int]) -> xt.NumpyModel:
    """Score = 3 · (pixel a kept) + 1 · (pixel b kept) on a white image (inpainting with 0)."""
    def fn(batch: np.ndarray) -> np.ndarray:
        return (3.0 * batch[:, 0, a[0], a[1]] + batch[:, 0, b[0], b[1]])[:, None]

    return xt.NumpyModel(fn, channel_axis=1)


def test_end_to_end_finds_the_cells_the_score_depends_on() -> None:
    size, n = 4, 256
    x = np.ones((1, 1, size, size), np.float32)
    model = two_cell_model(size, (1, 2), (3, 0))
    maps = xt.HsicAttribution(model, grid_size=size, nb_design=n, seed=0, batch_size=100)(x, [0])[0]
    design = hsic_design(n, size * size, seed=0)  # the default sampler
    y = 3.0 * design[:, 1 * size + 2] + design[:, 3 * size + 0]
    z = design - design.mean(axis=0)
    expected = hsic_scores(z.astype(np.float64), y.astype(np.float64), median_pairwise_distance(y))
    np.testing.assert_allclose(maps.ravel(), expected, rtol=1e-4, atol=1e-7)
    order = np.argsort(maps.ravel())[::-1]
    assert order[0] == 1 * size + 2 and order[1] == 3 * size + 0
    others = np.delete(maps.ravel(), [1 * size + 2, 3 * size])
    assert others.max() < 0.5 * maps[3, 0] < maps[1, 2]  # independent cells: only estimator noise


def test_orthogonal_design_gives_exact_zeros_where_the_score_does_not_depend() -> None:
    """With two active cells, each other cell's halves hold the four combinations of the two
    equally often (strength 3), so the score has one law in both halves and HSIC is exactly 0;
    the Latin hypercube leaves sampling noise there."""
    size = 4
    x = np.ones((1, 1, size, size), np.float32)
    model = two_cell_model(size, (1, 2), (3, 0))
    found = {}
    for sampler in ("orthogonal", "lhs"):
        maps = xt.HsicAttribution(model, grid_size=size, nb_design=96, sampler=sampler, seed=0)(x, [0])[0]
        found[sampler] = np.delete(maps.ravel(), [1 * size + 2, 3 * size]), maps
    others, maps = found["orthogonal"]
    np.testing.assert_allclose(others, 0.0, atol=1e-6)
    assert maps[1, 2] > maps[3, 0] > 1e-3
    assert found["lhs"][0].max() > 1e-3


def test_median_heuristic_is_invariant_to_affine_rescaling_of_the_score() -> None:
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3 * 8 * 8, 1))
    x = rng.random((2, 8, 8, 3), dtype=np.float32)

    def f(b: np.ndarray) -> np.ndarray:
        return np.tanh(b.reshape(len(b), -1) @ w)

    params = {"grid_size": 4, "nb_design": 64, "seed": 2}
    base = xt.HsicAttribution(f, **params)(x, [0, 0])
    scaled = xt.HsicAttribution(lambda b: 7.0 * f(b) - 3.0, **params)(x, [0, 0])
    np.testing.assert_allclose(scaled, base, rtol=1e-3, atol=1e-6)
    official = xt.HsicAttribution(lambda b: 7.0 * f(b) - 3.0, bandwidth="median_output", **params)(x, [0, 0])
    assert np.abs(official - base).max() > 1e-3  # the median of the outputs is not invariant


def test_constant_model_gives_zero_map() -> None:
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    maps = xt.HsicAttribution(lambda b: np.ones((len(b), 2)), grid_size=4, nb_design=32)(x, [1])
    np.testing.assert_allclose(maps, 0.0, atol=1e-9)


def test_samplers_and_seed_change_the_masks(framework: str) -> None:
    from xai_toolbox.testing import as_numpy, cnn, to_framework

    net = cnn(framework, seed=1)
    batch = to_framework(np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32), framework)
    runs = {
        key: as_numpy(xt.HsicAttribution(net, grid_size=4, nb_design=48, **params)(batch, [1]))
        for key, params in {
            "seed0": {"seed": 0}, "seed0b": {"seed": 0, "batch_size": 5}, "seed1": {"seed": 1},
            "orthogonal": {"sampler": "orthogonal", "seed": 0}, "lhs": {"sampler": "lhs"},
            "sobol": {"sampler": "sobol"}, "random": {"sampler": "random"},
        }.items()
    }
    np.testing.assert_allclose(runs["seed0b"], runs["seed0"], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(runs["orthogonal"], runs["seed0"])  # the default sampler
    for key in ("seed1", "lhs", "sobol", "random"):
        assert np.abs(runs[key] - runs["seed0"]).max() > 1e-6, key
