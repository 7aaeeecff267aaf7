"""Complexity of explanations: entropy (Bhatt, Weller, Moura, IJCAI 2020) and Gini
sparseness (Chalasani et al., ICML 2020).

Both read only the maps (no model pass beyond resolving top-1 targets) and are
scale-invariant: they measure how concentrated ``|φ|`` is. Definitions follow Xplique
(absolute values, channels averaged, ``ε = 1e-8``); an all-zero map has no distribution and
scores NaN (left out of the mean and its interval), where Xplique would give 0 entropy and a
negative Gini.
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox.extend import Targets

#: Xplique's guard against log(0) and 0/0.
EPS = 1e-8


def entropy(maps: np.ndarray) -> np.ndarray:
    """``−Σ p ln(p + ε)`` of ``p = |φ| / (Σ|φ| + ε)`` for each map ``(N, ...)``; NaN for an
    all-zero map.

    Example:
        >>> entropy(np.ones((1, 4, 4))).round(4)          # ln 16
        array([2.7726])
    """
    flat = np.abs(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1))
    total = flat.sum(axis=1, keepdims=True)
    p = flat / (total + EPS)
    values = -(p * np.log(p + EPS)).sum(axis=1)
    return np.where(total[:, 0] > 0, values, np.nan)


def gini(maps: np.ndarray) -> np.ndarray:
    """Gini index ``Σ (2i − n − 1) a_(i) / (n Σ a + ε)`` of ``a = |φ|`` sorted ascending, for
    each map ``(N, ...)``: 0 for a uniform map, ``(n − 1)/n`` for a single non-zero value; NaN
    for an all-zero map.

    Example:
        >>> gini(np.array([[0.0, 0.0, 0.0, 1.0]]))
        array([0.75])
    """
    flat = np.sort(np.abs(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)), axis=1)
    n = flat.shape[1]
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    total = flat.sum(axis=1)
    values = (flat * weights).sum(axis=1) / (n * total + EPS)
    return np.where(total > 0, values, np.nan)


class _MapMetric(xt.Metric):
    family = "complexity"

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None
        return self.make_result(self.per_map(maps.numpy()))

    @staticmethod
    def per_map(maps: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Complexity(_MapMetric):
    """Complexity (Bhatt et al., 2020): the entropy of the fractional contribution
    ``|φ_i| / Σ|φ|`` of each position — lower is better (a concise explanation), in
    ``[0, ln n]`` for ``n`` positions.

    Explanations with channels are averaged over them first (as Xplique). No parameters
    besides the standard ones.

    Example:
        >>> xt.Complexity(model)(images, labels, maps).mean
    """

    name = "complexity"
    higher_is_better = False
    per_map = staticmethod(entropy)


class Sparseness(_MapMetric):
    """Sparseness (Chalasani et al., 2020): the Gini index of ``|φ|`` — higher is better (a
    sparser explanation), in ``[0, (n − 1)/n]`` for ``n`` positions.

    Explanations with channels are averaged over them first (as Xplique). No parameters
    besides the standard ones.

    Example:
        >>> xt.Sparseness(model)(images, labels, maps).mean
    """

    name = "sparseness"
    higher_is_better = True
    per_map = staticmethod(gini)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(Complexity.name, Complexity)
    register(Sparseness.name, Sparseness)
