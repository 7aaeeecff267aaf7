"""Average Drop, Average Increase (Chattopadhay et al., WACV 2018) and Average Gain
(Zhang et al., Opti-CAM, CVIU 2024, Eq. 15).

Each input ``x`` is multiplied by its explanation, min-max normalised per input to a mask
``M ∈ [0, 1]``, and the target probability on ``x ⊙ M`` (``o``) is compared with the one on
``x`` (``p``):

* Average Drop       ``max(0, p − o) / p``        (lower is better)
* Average Increase   ``1[p < o]``                  (higher is better)
* Average Gain       ``max(0, o − p) / (1 − p)``   (higher is better)

Scores are per-input fractions; the papers report the mean ×100 (``percent=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets, activate, expand_to_inputs

#: Keeps the ratios finite where ``p`` is 0 or 1 (as Xplique's 1e-8).
EPS = 1e-8


def saliency_mask(maps: ep.Tensor, absolute: bool = False) -> ep.Tensor:
    """Per-input min-max normalisation of ``maps`` to ``[0, 1]``.

    A constant map carries no ranking; it becomes all ones if its value is positive (everything
    is kept: the map of a method that marks the whole image) and all zeros otherwise.
    """
    if absolute:
        maps = maps.abs()
    flat = maps.reshape((maps.shape[0], -1))
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    constant = span <= 0
    scaled = (flat - lo) / ep.where(constant, ep.ones_like(span), span)
    fallback = (flat > 0).astype(flat.dtype)
    return ep.where(constant, fallback, scaled).reshape(maps.shape)


class _AverageMetric(xt.Metric):
    family = "fidelity"
    """Scores each input once masked by its normalised explanation."""

    def __init__(
        self,
        model: Any,
        *,
        activation: str | None = "softmax",
        absolute: bool = False,
        percent: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.activation = xe.activation("activation", activation)
        self.absolute = xe.flag("absolute", absolute)
        self.percent = xe.flag("percent", percent)

    def probabilities(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """``p`` (clean) and ``o`` (masked) target probabilities, ``(N,)`` each."""
        p = xe.batched_scores(self.adapter, targets, x, self.batch_size, self.activation)
        masks = saliency_mask(maps, self.absolute)
        parts = []
        for start in range(0, x.shape[0], self.batch_size):
            rows = slice(start, min(start + self.batch_size, x.shape[0]))
            m = expand_to_inputs(masks[rows], x.ndim, self.adapter.channel_axis)
            outputs = self.adapter.forward(x[rows] * m)
            parts.append(targets.take(rows).score(activate(outputs, self.activation)))
        o = parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)
        return p.numpy().astype(np.float64), o.numpy().astype(np.float64)

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None
        p, o = self.probabilities(x, targets, maps)
        scores = self.per_input(p, o) * (100.0 if self.percent else 1.0)
        return self.make_result(scores, clean=p, masked=o)

    @staticmethod
    def per_input(p: np.ndarray, o: np.ndarray) -> np.ndarray:
        raise NotImplementedError


_DOC_ARGS = """
    Args:
        activation: ``"softmax"`` (default: the papers use class probabilities), ``"sigmoid"``
            (multi-label) or ``None`` (scores as given; Xplique's default, meaningful only for
            scores in [0, 1]).
        absolute: normalise ``|map|`` instead of the map (Xplique); for non-negative maps such
            as CAMs both agree.
        percent: report ×100, as the papers' tables (default: fractions, as Xplique).

    ``details`` hold ``clean`` (``p``) and ``masked`` (``o``) probabilities.
"""


class AverageDrop(_AverageMetric):
    __doc__ = (
        """Average Drop (Chattopadhay et al., 2018): ``max(0, p − o) / p`` per input — lower is better.

    An all-ones map keeps the whole image and scores 0: pair it with :class:`AverageGain`.
"""
        + _DOC_ARGS
        + """
    Example:
        >>> xt.AverageDrop(model)(images, labels, maps).mean
"""
    )

    name = "average_drop"
    higher_is_better = False

    @staticmethod
    def per_input(p: np.ndarray, o: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, p - o) / (p + EPS)


class AverageIncrease(_AverageMetric):
    __doc__ = (
        """Average Increase / increase in confidence (Chattopadhay et al., 2018): ``1[p < o]``
    per input — higher is better.
"""
        + _DOC_ARGS
        + """
    Example:
        >>> xt.AverageIncrease(model)(images, labels, maps).mean
"""
    )

    name = "average_increase"
    higher_is_better = True

    @staticmethod
    def per_input(p: np.ndarray, o: np.ndarray) -> np.ndarray:
        return (p < o).astype(np.float64)


class AverageGain(_AverageMetric):
    __doc__ = (
        """Average Gain (Zhang et al., Opti-CAM, 2024, Eq. 15): ``max(0, o − p) / (1 − p)`` per
    input — higher is better; the counterpart of Average Drop, normalised by the head-room.
"""
        + _DOC_ARGS
        + """
    Example:
        >>> xt.AverageGain(model)(images, labels, maps).mean
"""
    )

    name = "average_gain"
    higher_is_better = True

    @staticmethod
    def per_input(p: np.ndarray, o: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, o - p) / (1.0 - p + EPS)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(AverageDrop.name, AverageDrop)
    register(AverageIncrease.name, AverageIncrease)
    register(AverageGain.name, AverageGain)
