"""Shapley Value Sampling (Castro, Gómez, Tejada — Computers & Operations Research 2009).

The Shapley value of segment ``j`` is its marginal contribution ``f(S ∪ {j}) − f(S)``
averaged over the orders in which segments can join; the estimator averages it over
``nb_samples`` random permutations (Captum's ``ShapleyValueSampling``): along each permutation
the segments are switched from the baseline to the input one by one, and each gets the change
of the score it causes. The contributions of one permutation add up to ``f(x) − f(∅)``, so the
estimate is efficient for any number of permutations.

Permutations are drawn per input from ``numpy.random.default_rng(item_seed(seed, i))``; the
coalitions along them are streamed ``batch_size`` at a time across inputs. ``f(∅)`` and
``f(x)`` are evaluated once per input, not once per permutation: ``nb_samples · (M − 1) + 2``
forward passes for ``M`` segments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Explanation, SegmentMethod, Targets

from .surrogates import item_generators


def permutations(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """``(n, m)`` random orders of ``m`` segments (row ``s``: the order of permutation ``s``)."""
    return np.argsort(rng.random((n, m)), axis=1)


def permutation_coalitions(order: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Coalitions of the given sample indices along the permutations ``order`` ``(S, M)``:
    sample 0 is the empty coalition, 1 the full one, ``2 + s (M − 1) + (k − 1)`` the first
    ``k`` segments of permutation ``s`` (``0 < k < M``)."""
    n, m = order.shape
    ranks = np.argsort(order, axis=1)  # ranks[s, j]: when segment j joins in permutation s
    z = np.zeros((len(samples), m), dtype=np.uint8)
    z[samples == 1] = 1
    inner = samples >= 2
    if m > 1 and inner.any():
        s, k = np.divmod(samples[inner] - 2, m - 1)
        z[inner] = ranks[s] < (k + 1)[:, None]
    return z


def sampled_shapley_values(order: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(M,)`` mean marginal contributions from the scores ``y`` of
    :func:`permutation_coalitions` ``(2 + S (M − 1),)``."""
    n, m = order.shape
    path = np.empty((n, m + 1))
    path[:, 0], path[:, m] = y[0], y[1]
    if m > 1:
        path[:, 1:m] = y[2:].reshape(n, m - 1)
    gains = np.diff(path, axis=1)  # gains[s, k]: contribution of segment order[s, k]
    phi = np.zeros((n, m))
    np.put_along_axis(phi, order, gains, axis=1)
    return phi.mean(axis=0)


class ShapleyValueSampling(SegmentMethod):
    """Shapley Value Sampling: marginal contributions of segments averaged over random orders.

    Args:
        nb_samples: number of random permutations per input (Captum: 25).
        seed: seed of the permutations (``None``: fresh ones each call).
        segmentation, grid_size, segmentation_params, baseline: see
            :class:`~xai_toolbox.extend.SegmentMethod` (default an 8×8 grid, baseline 0).

    The attributions add up to ``f(x) − f(∅)`` exactly; ``f(∅)`` (every segment at the
    baseline) is ``extras["base_value"]`` (NumPy ``(N,)``).

    Example:
        >>> maps = xt.ShapleyValueSampling(model, nb_samples=25, seed=0)(images, labels)
    """

    name = "shapley_value_sampling"
    stochastic = True

    def passes_per_image(self) -> int | None:
        if isinstance(self.segmentation, str) and self.segmentation == "grid":
            return self.nb_samples * (self.grid_size**2 - 1) + 2  # images
        return None

    def __init__(self, model: Any, *, nb_samples: int = 25, seed: int | None = 0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.seed = seed

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> Explanation:
        segments = self.segments_of(x)
        n = x.shape[0]
        rngs = item_generators(self.seed, n)
        orders = [permutations(rngs[i], m, self.nb_samples) for i, m in enumerate(segments.counts.tolist())]
        counts = np.array([2 + self.nb_samples * (m - 1) for m in segments.counts.tolist()])
        scores, _ = self.coalition_scores(
            x, targets, segments, counts, lambda i, s: permutation_coalitions(orders[i], s)
        )
        values = np.zeros((n, segments.width))
        for i, (order, y) in enumerate(zip(orders, scores, strict=True)):
            values[i, : order.shape[1]] = sampled_shapley_values(order, y)
        return Explanation(segments.paint(self.adapter, x, values), {"base_value": np.array([y[0] for y in scores])})


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(ShapleyValueSampling.name, ShapleyValueSampling)
