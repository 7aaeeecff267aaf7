"""Relevance Mass Accuracy and Relevance Rank Accuracy against ground-truth masks."""

from __future__ import annotations

import numpy as np
import pytest
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox.metrics.localisation import (
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    mass_accuracy,
    rank_accuracy,
)
from xai_toolbox.testing import check_metric, cnn, to_framework


def _masks() -> np.ndarray:
    masks = np.zeros((3, 16, 16), np.float32)
    masks[0, 2:6, 2:6] = 1
    masks[1, 8:, :] = 1
    masks[2, 0, :] = 1
    return masks


def reference_rra(a: np.ndarray, gt: np.ndarray) -> float:
    k = int(gt.sum())
    top = np.argsort(-a.ravel(), kind="stable")[:k]
    return float(gt.ravel()[top].sum() / k)


def test_analytic_values() -> None:
    masks = _masks()
    np.testing.assert_allclose(mass_accuracy(masks, masks), 1.0)
    np.testing.assert_allclose(rank_accuracy(masks, masks), 1.0)
    uniform = np.ones_like(masks)
    np.testing.assert_allclose(mass_accuracy(uniform, masks), masks.reshape(3, -1).mean(axis=1))
    maps = np.random.default_rng(0).normal(size=masks.shape)
    expected = [(m * g).sum() / m.sum() for m, g in zip(maps, masks, strict=True)]
    np.testing.assert_allclose(mass_accuracy(maps, masks), expected)
    np.testing.assert_allclose(rank_accuracy(maps, masks), [reference_rra(m, g) for m, g in zip(maps, masks, strict=True)])


def test_relevance_kinds_and_empty_masks(framework: str) -> None:
    model = cnn(framework)
    x = to_framework(np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32), framework)
    maps = np.random.default_rng(2).normal(size=(3, 16, 16)).astype(np.float32)
    masks = _masks()
    masks[2] = 0  # empty: undefined
    positive = RelevanceMassAccuracy(model)(x, [0, 1, 2], maps, masks=masks)
    clipped = np.maximum(maps, 0)
    np.testing.assert_allclose(positive.scores[:2], mass_accuracy(clipped, masks)[:2], rtol=1e-6)
    assert np.isnan(positive.scores[2]) and positive.n == 2
    signed = RelevanceMassAccuracy(model, relevance="signed")(x, [0, 1, 2], maps, masks=masks)
    np.testing.assert_allclose(signed.scores[:2], mass_accuracy(maps.astype(np.float64), masks)[:2], rtol=1e-5)
    absolute = RelevanceRankAccuracy(model, relevance="absolute")(x, [0, 1, 2], maps, masks=masks)
    np.testing.assert_allclose(absolute.scores[:2], [reference_rra(np.abs(maps[i]), masks[i]) for i in range(2)])
    assert RelevanceRankAccuracy(model).relevance == "signed" and positive.family == "localisation"


def test_masks_required_before_any_model_call(framework: str) -> None:
    counted = CountedModel(framework)
    x = to_framework(np.zeros((3, 3, 16, 16), np.float32), framework)
    for cls in (RelevanceMassAccuracy, RelevanceRankAccuracy):
        with pytest.raises(xt.ExplanationShapeError, match="masks"):
            cls(counted.model)(x, [0, 1, 2], np.ones((3, 16, 16), np.float32))
    with pytest.raises(xt.ParameterError, match="relevance"):
        RelevanceMassAccuracy(counted.model, relevance="negative")
    assert counted.calls == 0


@pytest.mark.parametrize("cls", [RelevanceMassAccuracy, RelevanceRankAccuracy])
def test_contract(cls: type, pytestconfig: pytest.Config) -> None:
    check_metric(cls, frameworks=pytestconfig.frameworks, masks=True)
