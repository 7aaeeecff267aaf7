"""Localisation against ground-truth masks: Relevance Mass Accuracy and Relevance Rank Accuracy
(Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 2022).

Like the pointing games, they compare each explanation with its mask and never run the model
on perturbed inputs. An empty mask makes both undefined: NaN (left out of the mean).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import Targets

from .causal import descending_ranks

RELEVANCE = ("positive", "absolute", "signed")


def relevance(maps: np.ndarray, kind: str) -> np.ndarray:
    """The relevance each metric counts: ``"positive"`` (negatives set to 0), ``"absolute"``
    (``|φ|``) or ``"signed"`` (``φ`` as is)."""
    maps = np.asarray(maps, dtype=np.float64)
    if kind == "positive":
        return np.maximum(maps, 0.0)
    return np.abs(maps) if kind == "absolute" else maps


def mass_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``Σ_{p ∈ GT} a_p / Σ_p a_p`` per map; NaN for an empty mask or a zero total.

    Example:
        >>> mass_accuracy(np.array([[1.0, 3.0]]), np.array([[0, 1]]))
        array([0.75])
    """
    a = maps.reshape(len(maps), -1)
    gt = masks.reshape(len(masks), -1) > 0.5
    total = a.sum(axis=1)
    within = (a * gt).sum(axis=1)
    ok = (total != 0) & gt.any(axis=1)
    return np.where(ok, within / np.where(total != 0, total, 1.0), np.nan)


def rank_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``|top-K ∩ GT| / K`` with ``K = |GT|`` per map (ties broken by position index,
    row-major); NaN for an empty mask.

    Example:
        >>> rank_accuracy(np.array([[0.1, 0.9, 0.5, 0.2]]), np.array([[0, 1, 0, 1]]))
        array([0.5])
    """
    ranks = descending_ranks(maps).reshape(len(maps), -1)
    gt = masks.reshape(len(masks), -1) > 0.5
    k = gt.sum(axis=1)
    hits = ((ranks < k[:, None]) & gt).sum(axis=1)
    return np.where(k > 0, hits / np.maximum(k, 1), np.nan)


class _LocalisationMetric(xt.Metric):
    family = "localisation"
    needs_masks = True
    higher_is_better = True

    def __init__(self, model: Any, *, relevance: str = "positive", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.relevance = xe.one_of("relevance", relevance, RELEVANCE)

    def score_batch(
        self, x: ep.Tensor, targets: Targets, maps: ep.Tensor | None, masks: ep.Tensor | None
    ) -> xt.MetricResult:
        assert maps is not None and masks is not None
        values = relevance(maps.numpy(), self.relevance)
        return self.make_result(self.per_map(values, masks.numpy()))

    @staticmethod
    def per_map(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RelevanceMassAccuracy(_LocalisationMetric):
    """Relevance Mass Accuracy (Arras et al., 2022): the share of the relevance that falls
    inside the ground-truth mask — higher is better, in ``[0, 1]`` for non-negative relevance.

    Args:
        relevance: what is counted: ``"positive"`` (default: the paper counts positive
            relevance only), ``"absolute"`` (``|φ|``) or ``"signed"`` (Quantus' code, which can
            leave ``[0, 1]``).

    Example:
        >>> xt.RelevanceMassAccuracy(model)(images, labels, maps, masks=masks).mean
    """

    name = "relevance_mass_accuracy"
    per_map = staticmethod(mass_accuracy)


class RelevanceRankAccuracy(_LocalisationMetric):
    """Relevance Rank Accuracy (Arras et al., 2022): with ``K`` the mask's size, the share of
    the ``K`` most relevant positions that lie inside the mask — higher is better, in
    ``[0, 1]``.

    Args:
        relevance: what is ranked: ``"signed"`` (default: the paper and Quantus rank the raw
            relevance), ``"absolute"`` or ``"positive"`` (negatives tie at 0).

    Ties are broken by position index (row-major), identically in every framework.

    Example:
        >>> xt.RelevanceRankAccuracy(model)(images, labels, maps, masks=masks).mean
    """

    name = "relevance_rank_accuracy"
    per_map = staticmethod(rank_accuracy)

    def __init__(self, model: Any, *, relevance: str = "signed", **kwargs: Any) -> None:
        super().__init__(model, relevance=relevance, **kwargs)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(RelevanceMassAccuracy.name, RelevanceMassAccuracy)
    register(RelevanceRankAccuracy.name, RelevanceRankAccuracy)
