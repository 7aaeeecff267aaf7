"""Localisation metrics against ground-truth masks: the pointing game (Zhang et al., ECCV 2016)
and the energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020).

Neither runs the model on perturbed inputs: they compare each explanation with its mask.
(Only ``targets=None`` costs one forward pass, to resolve the top-1 classes.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets


def first_argmax(maps: np.ndarray) -> np.ndarray:
    """Coordinates ``(N, ndim)`` of each map's maximum; ties: the first in row-major order."""
    flat = maps.reshape(maps.shape[0], -1)
    index = flat.argmax(axis=1)  # NumPy documents first-occurrence; TF's argmax does not
    return np.stack(np.unravel_index(index, maps.shape[1:]), axis=1)


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-map hit (1.0), miss (0.0) or NaN (empty mask), and the points.

    A hit: some mask position lies at Euclidean distance ``< tolerance`` of the point
    (TorchRay's strict inequality), or the point itself lies in the mask (so ``tolerance=0``
    is Quantus' "maximum inside the mask").
    """
    points = first_argmax(maps)
    grids = np.indices(maps.shape[1:]).reshape(maps.ndim - 1, -1).T  # (P, ndim)
    hits = np.full(len(maps), np.nan)
    for i, (point, mask) in enumerate(zip(points, masks.reshape(len(masks), -1) > 0.5, strict=True)):
        if not mask.any():
            continue  # no object: the game is undefined for this input
        d2 = ((grids[mask] - point) ** 2).sum(axis=1)
        nearest = d2.min()
        hits[i] = float(nearest == 0 or nearest < tolerance**2)
    return hits, points


class _MaskMetric(xt.Metric):
    family = "localisation"
    needs_masks = True
    needs_explanations = True


class PointingGame(_MaskMetric):
    """Pointing game (Zhang et al., 2016): 1 if the maximum of the explanation falls on (or
    within ``tolerance`` positions of) the ground-truth mask, else 0 — higher is better.

    Args:
        tolerance: radius in positions (Euclidean, strict ``<`` as TorchRay); default 15, the
            paper's value for 224-pixel images — scale it with the resolution (15 px ≈ 6.7 % of
            the side). ``0``: the maximum must lie inside the mask.

    The point is the first maximum in row-major order when several positions tie. Inputs whose
    mask is empty score NaN and are left out of ``mean``. The paper reports the mean over classes
    of per-class accuracies: ``details["class_accuracy"]`` gives them when the targets are
    class indices, ``details["points"]`` the chosen points.

    Example:
        >>> xt.PointingGame(model, tolerance=15)(images, labels, maps, masks=boxes).mean
    """

    name = "pointing_game"
    higher_is_better = True

    def __init__(
        self,
        model: Any,
        *,
        tolerance: float = 15,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        tolerance = xe.number("tolerance", tolerance)
        if tolerance < 0:
            raise xt.ParameterError(f"tolerance must be >= 0, got {tolerance!r}")
        self.tolerance = tolerance

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None and masks is not None
        hits, points = pointing_hits(maps.numpy(), masks.numpy(), self.tolerance)
        details: dict[str, Any] = {"points": points, **_empty_masks_reason(hits)}
        if targets.labels is not None:
            details["class_accuracy"] = {
                int(c): float(np.nanmean(hits[targets.labels == c]))
                for c in np.unique(targets.labels)
                if np.isfinite(hits[targets.labels == c]).any()
            }
        return self.make_result(hits, **details)


def _empty_masks_reason(scores: np.ndarray) -> dict[str, str]:
    """The reason given with NaN scores: empty masks (no position above 0.5)."""
    if np.isnan(scores).any():
        return {"undefined_reason": "empty masks (no position above 0.5) leave the game undefined"}
    return {}


class EnergyPointingGame(_MaskMetric):
    """Energy-based pointing game (Wang et al., Score-CAM, 2020): the share of the explanation's
    positive mass that lies inside the ground-truth mask, ``Σ_mask S⁺ / Σ S⁺`` — higher is better.

    Negative values are clipped to 0 (CAMs are non-negative already; for signed maps only the
    evidence for the class counts). A map with no positive mass scores 0. An empty mask (no
    position above 0.5) leaves the game undefined: NaN, left out of the mean, as in the
    pointing game. The share is scale-free, so each map is divided by its maximum first: maps
    with values near the float32 limit cannot overflow the sums.

    Example:
        >>> xt.EnergyPointingGame(model)(images, labels, maps, masks=boxes).mean
    """

    name = "energy_pointing_game"
    higher_is_better = True

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None and masks is not None
        positive = maps.maximum(0.0).reshape((maps.shape[0], -1))
        peak = positive.max(axis=1, keepdims=True)
        positive = positive / ep.where(peak > 0, peak, ep.ones_like(peak))  # sums now <= positions
        inside_mask = (masks.reshape((masks.shape[0], -1)) > 0.5).astype(positive.dtype)
        inside = (positive * inside_mask).sum(axis=1)
        total = positive.sum(axis=1)
        share = ep.where(total > 0, inside / ep.where(total > 0, total, ep.ones_like(total)), ep.zeros_like(total))
        scores = share.numpy().astype(np.float64)
        scores[inside_mask.sum(axis=1).numpy() == 0] = np.nan
        return self.make_result(scores, **_empty_masks_reason(scores))


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(PointingGame.name, PointingGame)
    register(EnergyPointingGame.name, EnergyPointingGame)
