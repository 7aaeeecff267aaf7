"""A metric written on the public extension API only: Concentration, the Gini index of |map|."""

from __future__ import annotations

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe


class Concentration(xt.Metric):
    """Gini index of ``|map|`` per input: 0 for a flat map, close to 1 for a single peak —
    higher is better (a more concentrated explanation).

    ``G = Σ_i (2i − n − 1) v_(i) / (n Σ_i v_(i))`` over the ``n`` positions sorted increasingly
    (Hurley & Rickard's form); an all-zero map scores 0.

    Example:
        >>> xt.metric("concentration", model)(images, labels, maps).mean
    """

    name = "concentration"
    higher_is_better = True

    def score_batch(
        self, x: ep.Tensor, targets: xe.Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None
        values = np.sort(np.abs(maps.numpy().reshape(maps.shape[0], -1)).astype(np.float64), axis=1)
        n = values.shape[1]
        ranks = np.arange(1, n + 1)
        total = values.sum(axis=1)
        gini = ((2 * ranks - n - 1) * values).sum(axis=1) / (n * np.where(total > 0, total, 1.0))
        return self.make_result(gini)
