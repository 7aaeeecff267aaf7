"""Surrogate methods: LIME (Ribeiro et al., 2016) and KernelSHAP (Lundberg & Lee, 2017).

Both explain an input through its segments (grid cells, superpixels, features; see
:class:`xai_toolbox.extend.SegmentMethod`): they score the model on random coalitions of kept
segments and fit a weighted linear model ``g(z) = β₀ + βᵀz`` to the scores; the attribution of
segment ``j`` is ``β_j``, painted over its positions.

* LIME: Bernoulli(1/2) coalitions (the first one keeps everything, as the lime package), weights
  from an exponential kernel on the distance to the unperturbed input, a ridge fit.
* KernelSHAP: coalition sizes drawn from the Shapley kernel, uniform subsets of that size,
  least squares under the efficiency constraint ``β₀ = f(∅)``, ``Σβ = f(x) − f(∅)`` solved
  exactly (as the shap package); every coalition is enumerated, with the kernel's weights,
  when the budget allows, which gives the exact Shapley values.

Coalitions are drawn per input from ``numpy.random.default_rng(item_seed(seed, i))``, so a map
depends on the seed and the input's position in the batch only, never on ``batch_size``.
The fits run on the host, per input, after one copy of the scores.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Explanation, SegmentMethod, Targets

DISTANCES = ("cosine", "euclidean")
SPACES = ("interpretable", "input")


def item_generators(seed: int | None, n: int) -> list[np.random.Generator]:
    """One NumPy generator per input, ``default_rng(item_seed(seed, i))`` (``None``: a fresh
    seed for the call)."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    return [np.random.default_rng(xe.item_seed(seed, i)) for i in range(n)]


# -- LIME ----------------------------------------------------------------------------------------
def lime_coalitions(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """``(n, m)`` 0/1 coalitions: each segment kept with probability 1/2, the first row all
    ones (the unperturbed input, as the lime package)."""
    z = (rng.random((n, m)) < 0.5).astype(np.uint8)
    z[0] = 1
    return z


def interpretable_distance(z: np.ndarray, distance: str) -> np.ndarray:
    """Distance of each coalition ``(n, m)`` to the all-ones one (the unperturbed input):
    cosine ``1 − sqrt(k / m)`` (1 for the empty coalition, as scikit-learn's
    ``pairwise_distances``) or Euclidean ``sqrt(m − k)``, ``k`` the kept segments."""
    m = z.shape[1]
    kept = z.sum(axis=1, dtype=np.float64)
    if distance == "euclidean":
        return np.sqrt(m - kept)
    return 1.0 - np.sqrt(kept / m)


def kernel_weights(d: np.ndarray, width: float) -> np.ndarray:
    """The exponential kernel ``exp(−d² / (2 w²))`` (lime's ``sqrt(exp(−d²/w²))``, Captum's)."""
    return np.exp(-(d**2) / (2.0 * width * width))


class Lime(SegmentMethod):
    """LIME (Ribeiro, Singh, Guestrin — KDD 2016): a weighted linear surrogate over segments.

    Args:
        nb_samples: coalitions per input, the unperturbed input included (lime: 1000).
        kernel_width: width ``w`` of the kernel ``exp(−d² / (2w²))`` (lime: 0.25 for its
            cosine distance between coalitions).
        distance: ``"cosine"`` or ``"euclidean"``.
        distance_space: ``"interpretable"`` (between coalition vectors, the lime package) or
            ``"input"`` (between the flattened input and perturbed input: Captum with cosine,
            Xplique with Euclidean — set ``kernel_width`` to the input scale).
        regressor: ``"ridge"`` (lime, Xplique), ``"lasso"`` (Captum), ``"linear"``, or an
            unfitted scikit-learn-style estimator.
        alpha: penalty of ``"ridge"``/``"lasso"`` (lime: ridge 1.0; Captum: lasso 0.01).
        seed: seed of the coalitions (``None``: fresh ones each call).
        segmentation, grid_size, segmentation_params, baseline: see
            :class:`~xai_toolbox.extend.SegmentMethod` (default an 8×8 grid, baseline 0).

    ``extras`` of :meth:`explain_with_extras`: ``intercept`` and ``r2`` (the weighted R² of
    the surrogate on its samples, lime's ``score``), NumPy ``(N,)``.

    Example:
        >>> maps = xt.Lime(model, nb_samples=1000, seed=0)(images, labels)
        >>> maps = xt.Lime(model)(images, labels, segments=superpixels)     # (N, H, W) labels
    """

    name = "lime"
    family = "surrogate"
    stochastic = True

    def passes_per_image(self) -> int | None:
        return self.nb_samples

    def __init__(
        self,
        model: Any,
        *,
        nb_samples: int = 1000,
        kernel_width: float = 0.25,
        distance: str = "cosine",
        distance_space: str = "interpretable",
        regressor: Any = "ridge",
        alpha: float = 1.0,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.kernel_width = xe.in_range("kernel_width", kernel_width, 0.0, math.inf)
        self.distance = xe.one_of("distance", distance, DISTANCES)
        self.distance_space = xe.one_of("distance_space", distance_space, SPACES)
        self.regressor = xe.linear_regressor("regressor", regressor)
        self.alpha = xe.in_range("alpha", xe.number("alpha", alpha), 0.0, math.inf, inclusive=True)
        self.seed = seed

    def _input_distance(self, rows: ep.Tensor, perturbed: ep.Tensor) -> ep.Tensor:
        b = perturbed.shape[0]
        if self.distance == "euclidean":
            return ((rows - perturbed) ** 2).reshape((b, -1)).sum(axis=1).sqrt()
        dot = (rows * perturbed).reshape((b, -1)).sum(axis=1)
        norm_x = (rows * rows).reshape((rows.shape[0], -1)).sum(axis=1).sqrt()
        norm_p = (perturbed * perturbed).reshape((b, -1)).sum(axis=1).sqrt()
        return 1.0 - dot / ep.maximum(norm_x * norm_p, 1e-8)  # torch's CosineSimilarity eps

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> Explanation:
        segments = self.segments_of(x)
        n = x.shape[0]
        rngs = item_generators(self.seed, n)
        designs = [lime_coalitions(rngs[i], int(segments.counts[i]), self.nb_samples) for i in range(n)]
        extra = self._input_distance if self.distance_space == "input" else None
        scores, distances = self.coalition_scores(
            x, targets, segments, np.full(n, self.nb_samples), lambda i, s: designs[i][s], extra
        )
        values = np.zeros((n, segments.width))
        intercepts, r2 = np.zeros(n), np.zeros(n)
        for i in range(n):
            z, y = designs[i], scores[i]
            d = interpretable_distance(z, self.distance) if distances is None else distances[i]
            w = kernel_weights(d, self.kernel_width)
            if not np.any(w > 0):
                warnings.warn(
                    f"lime: every kernel weight of input {i} is 0 (kernel_width={self.kernel_width} "
                    "is small for these distances); fitting with uniform weights",
                    RuntimeWarning,
                    stacklevel=2,
                )
                w = np.ones_like(w)
            coef, intercepts[i] = xe.fit_linear_surrogate(z, y, w, regressor=self.regressor, alpha=self.alpha)
            values[i, : len(coef)] = coef
            r2[i] = weighted_r2(y, intercepts[i] + z @ coef, w)
        maps = segments.paint(self.adapter, x, values)
        return Explanation(maps, {"intercept": intercepts, "r2": r2})


def weighted_r2(y: np.ndarray, prediction: np.ndarray, w: np.ndarray) -> float:
    """Weighted coefficient of determination (scikit-learn's ``score`` with ``sample_weight``);
    1 for a perfect fit of constant scores."""
    residual = float(np.sum(w * (y - prediction) ** 2))
    total = float(np.sum(w * (y - np.average(y, weights=w)) ** 2))
    if total == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / total


# -- KernelSHAP ----------------------------------------------------------------------------------
def shapley_kernel(m: int, k: np.ndarray) -> np.ndarray:
    """The Shapley kernel ``π(k) = (M − 1) / (C(M, k) · k · (M − k))`` of coalitions of size
    ``0 < k < M``."""
    k = np.asarray(k, dtype=np.int64)
    binom = np.array([math.comb(m, int(j)) for j in k.ravel()], dtype=np.float64).reshape(k.shape)
    return (m - 1) / (binom * k * (m - k))


def kernel_shap_design(rng: np.random.Generator, m: int, n: int, paired: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(coalitions, weights)`` of one input with ``m`` segments and a budget of ``n``.

    Rows 0 and 1 are the full and the empty coalition. With ``2^m ≤ n`` the others are every
    proper coalition, weighted by the Shapley kernel (the fit then gives the exact Shapley
    values); otherwise ``n − 2`` coalitions whose size ``k`` is drawn with probability
    ``∝ (m − 1) / (k (m − k))`` and whose members are a uniform subset of that size (this
    samples the kernel, so their weights are 1 — Captum's and Xplique's sampler). ``paired``:
    every drawn coalition is followed by its complement (the shap package's paired sampling;
    the size distribution is symmetric, so each row still follows it, and the pairs cancel
    much of the variance).
    """
    ends = np.stack([np.ones(m, np.uint8), np.zeros(m, np.uint8)])
    if m == 1:
        return ends, np.ones(2)
    if 2**m <= n:
        codes = np.arange(1, 2**m - 1, dtype=np.int64)
        z = ((codes[:, None] >> np.arange(m)[None, :]) & 1).astype(np.uint8)
        return np.concatenate([ends, z]), np.concatenate([[1.0, 1.0], shapley_kernel(m, z.sum(axis=1))])
    draws = -(-(n - 2) // 2) if paired else n - 2
    sizes = np.arange(1, m)
    p = (m - 1) / (sizes * (m - sizes))
    k = rng.choice(sizes, size=draws, p=p / p.sum())
    ranks = np.argsort(np.argsort(rng.random((draws, m)), axis=1), axis=1)  # a uniform permutation
    z = (ranks < k[:, None]).astype(np.uint8)
    if paired:  # z_0, 1 − z_0, z_1, 1 − z_1, ...
        z = np.stack([z, 1 - z], axis=1).reshape(-1, m)[: n - 2]
    return np.concatenate([ends, z]), np.ones(n)


def constrained_shapley_fit(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Shapley values ``φ`` from coalitions ``z`` (rows 0, 1: full, empty), scores ``y`` and
    weights ``w``: weighted least squares of ``y − f(∅) ≈ z·φ`` over the proper coalitions
    under ``Σφ = f(x) − f(∅)``, solved exactly by eliminating the last segment (as shap)."""
    m = z.shape[1]
    total = y[0] - y[1]
    if m == 1:
        return np.array([total])
    zs, ys, root = z[2:].astype(np.float64), y[2:] - y[1], np.sqrt(w[2:])
    a = (zs[:, :-1] - zs[:, -1:]) * root[:, None]
    b = (ys - zs[:, -1] * total) * root
    head = np.linalg.lstsq(a, b, rcond=None)[0]
    return np.concatenate([head, [total - head.sum()]])


class KernelShap(SegmentMethod):
    """KernelSHAP (Lundberg & Lee — NeurIPS 2017): Shapley values of segments by a weighted
    linear regression under the efficiency constraint.

    Args:
        nb_samples: coalitions per input, the full and the empty one included; ``"auto"``:
            ``2M + 2048`` for ``M`` segments (shap's default). When ``2^M`` coalitions fit in
            the budget they are all evaluated and the result is exact.
        paired: sample each coalition with its complement (the shap package's paired
            sampling: much lower variance); ``False``: independent draws (Captum, Xplique).
        seed: seed of the sampled coalitions (``None``: fresh ones each call).
        segmentation, grid_size, segmentation_params, baseline: see
            :class:`~xai_toolbox.extend.SegmentMethod` (default an 8×8 grid, baseline 0).

    The attributions add up to ``f(x) − f(∅)`` exactly (``f(∅)``: the score of the input with
    every segment at the baseline), given in ``extras["base_value"]`` (NumPy ``(N,)``).

    Example:
        >>> maps = xt.KernelShap(model, seed=0)(images, labels)
        >>> maps = xt.KernelShap(fn, nb_samples=600)(rows, labels)        # tabular (N, F)
    """

    name = "kernel_shap"
    family = "surrogate"
    stochastic = True

    def passes_per_image(self) -> int | None:
        if isinstance(self.segmentation, str) and self.segmentation == "grid":
            return self.budget(self.grid_size**2)  # images
        return None if self.nb_samples == "auto" else int(self.nb_samples)  # at most

    def __init__(
        self, model: Any, *, nb_samples: int | str = "auto", paired: bool = True, seed: int | None = 0, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        if nb_samples != "auto":
            nb_samples = xe.positive_int("nb_samples", nb_samples)
            if nb_samples < 3:
                raise xt.ParameterError(
                    f"nb_samples must be at least 3 (the full and empty coalitions and one more), got {nb_samples}"
                )
        self.nb_samples = nb_samples
        self.paired = xe.flag("paired", paired)
        self.seed = seed

    def budget(self, m: int) -> int:
        """Coalitions evaluated for an input with ``m`` segments."""
        n = 2 * m + 2048 if self.nb_samples == "auto" else int(self.nb_samples)
        return min(n, 2**m)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> Explanation:
        segments = self.segments_of(x)
        n = x.shape[0]
        rngs = item_generators(self.seed, n)
        designs = [
            kernel_shap_design(rngs[i], m, self.budget(m), self.paired) for i, m in enumerate(segments.counts.tolist())
        ]
        counts = np.array([len(z) for z, _ in designs])
        scores, _ = self.coalition_scores(x, targets, segments, counts, lambda i, s: designs[i][0][s])
        values = np.zeros((n, segments.width))
        for i, ((z, w), y) in enumerate(zip(designs, scores, strict=True)):
            values[i, : z.shape[1]] = constrained_shapley_fit(z, y, w)
        return Explanation(segments.paint(self.adapter, x, values), {"base_value": np.array([y[1] for y in scores])})


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(Lime.name, Lime)
    register(KernelShap.name, KernelShap)
