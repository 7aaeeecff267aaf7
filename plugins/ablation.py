"""Feature Ablation over segments (Captum's ``FeatureAblation`` with a feature mask).

The attribution of segment ``j`` is the score drop when that segment alone takes the
baseline value: ``f(x) − f(x with segment j removed)``, painted over every position of the
segment (not divided by its size). One forward pass per segment and input, plus ``f(x)``,
streamed ``batch_size`` at a time across inputs. Deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox.extend import SegmentMethod, Targets


def ablation_coalitions(m: int, samples: np.ndarray) -> np.ndarray:
    """Sample 0 keeps every segment; sample ``j ≥ 1`` removes segment ``j − 1`` only."""
    z = np.ones((len(samples), m), dtype=np.uint8)
    removed = samples >= 1
    z[np.flatnonzero(removed), samples[removed] - 1] = 0
    return z


class FeatureAblation(SegmentMethod):
    """Feature Ablation: the score drop when one segment takes the baseline value.

    Args:
        segmentation, grid_size, segmentation_params, baseline: see
            :class:`~xai_toolbox.extend.SegmentMethod` (default an 8×8 grid, baseline 0;
            tabular rows: one segment per feature).

    Example:
        >>> maps = xt.FeatureAblation(model, grid_size=14)(images, labels)
        >>> maps = xt.FeatureAblation(model)(images, labels, segments=superpixels)
    """

    name = "feature_ablation"

    def passes_per_image(self) -> int | None:
        if isinstance(self.segmentation, str) and self.segmentation == "grid":
            return self.grid_size**2 + 1  # images
        return None

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        segments = self.segments_of(x)
        m = segments.counts
        scores, _ = self.coalition_scores(
            x, targets, segments, m + 1, lambda i, s: ablation_coalitions(int(m[i]), s)
        )
        drops = np.zeros((x.shape[0], segments.width))
        for i, y in enumerate(scores):
            drops[i, : m[i]] = y[0] - y[1:]
        return segments.paint(self.adapter, x, drops)


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(FeatureAblation.name, FeatureAblation)
