"""ROAD: the noisy linear imputation's anchors, MoRF/LeRF against a NumPy reference, twins."""

from __future__ import annotations

import numpy as np
import pytest
from _shared import CountedModel, outputs_of

import xai_toolbox as xt
from xai_toolbox.metrics.road import RoadLeRF, RoadMoRF, linear_imputation, noisy_linear_imputation
from xai_toolbox.testing import check_metric, cnn, to_framework, twin_cnn


def test_imputation_anchors() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, 3))
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True
    got = linear_imputation(image, corner)
    expected = (2 * image[:, 0, 1] + 2 * image[:, 1, 0] + image[:, 1, 1]) / 5
    np.testing.assert_allclose(got[:, 0, 0], expected)
    np.testing.assert_array_equal(got[:, ~corner], image[:, ~corner])  # kept pixels untouched
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True
    ring = image[:, [0, 2, 1, 1], [1, 1, 0, 2]].sum(axis=1) / 6 + image[:, [0, 0, 2, 2], [0, 2, 0, 2]].sum(axis=1) / 12
    np.testing.assert_allclose(linear_imputation(image, centre)[:, 1, 1], ring)


def test_affine_and_constant_images_are_reproduced() -> None:
    rows, cols = np.mgrid[0:12, 0:12]
    affine = (0.3 * rows - 0.2 * cols + 1.0)[None]
    removed = np.zeros((12, 12), bool)
    removed[3:9, 2:10] = True  # every removed pixel has 8 in-image neighbours
    np.testing.assert_allclose(linear_imputation(affine, removed), affine, atol=1e-10)
    constant = np.full((3, 12, 12), 0.7)
    scattered = np.random.default_rng(1).random((12, 12)) < 0.6
    np.testing.assert_allclose(linear_imputation(constant, scattered), constant, atol=1e-10)
    noisy = noisy_linear_imputation(constant, scattered, 0.01, np.random.default_rng(2))
    assert 0.005 < np.std(noisy[:, scattered]) < 0.015 and np.all(noisy[:, ~scattered] == 0.7)


def reference_road(model, framework, images, targets, maps, percentiles, most_relevant_first, seed):  # type: ignore[no-untyped-def]
    """MoRF/LeRF written out: per image and fraction, impute, then the softmax of the target."""
    curves = np.zeros((len(images), len(percentiles)))
    for i, image in enumerate(images):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        for s, p in enumerate(percentiles):
            k = int(np.floor(p * order.size + 1e-9))
            chosen = order[:k] if most_relevant_first else order[order.size - k :]
            removed = np.zeros(order.size, bool)
            removed[chosen] = True
            imputed = noisy_linear_imputation(
                image.astype(np.float64), removed.reshape(maps.shape[1:]), 0.01, np.random.default_rng([seed, i, s])
            )
            logits = outputs_of(model, framework, imputed[None])[0]
            probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            curves[i, s] = probabilities[targets[i]]
    return curves


@pytest.mark.parametrize("cls", [RoadMoRF, RoadLeRF])
def test_matches_numpy_reference(cls: type, framework: str) -> None:
    model = cnn(framework, seed=1)
    images = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    maps = np.random.default_rng(4).random((2, 16, 16), dtype=np.float32)
    targets = np.array([1, 3])
    percentiles = [0.25, 0.5, 0.8]
    result = cls(model, percentiles=percentiles, seed=6)(to_framework(images, framework), targets, maps)
    expected = reference_road(model, framework, images, targets, maps, percentiles, cls is RoadMoRF, 6)
    np.testing.assert_allclose(result.curves, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.scores, expected.mean(axis=1), rtol=1e-4)
    assert list(result.details["removed"]) == [64, 128, 204] and result.family == "fidelity"


def test_twins_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=4)
    images = np.random.default_rng(5).random((3, 3, 16, 16), dtype=np.float32)
    maps = np.random.default_rng(6).random((3, 16, 16), dtype=np.float32)
    for cls in (RoadMoRF, RoadLeRF):
        a = cls(torch_model, percentiles=[0.3, 0.6])(to_framework(images, "torch"), [0, 1, 2], maps)
        b = cls(keras_model, percentiles=[0.3, 0.6])(to_framework(images, "tf"), [0, 1, 2], maps)
        np.testing.assert_allclose(a.curves, b.curves, atol=1e-5)


@pytest.mark.parametrize("cls", [RoadMoRF, RoadLeRF])
def test_contract(cls: type, pytestconfig: pytest.Config) -> None:
    check_metric(cls, {"percentiles": [0.2, 0.6]}, frameworks=pytestconfig.frameworks)


def test_bad_configuration_fails_before_model_calls(framework: str) -> None:
    counted = CountedModel(framework)
    for bad in ({"percentiles": [0.0, 0.5]}, {"percentiles": [1.0]}, {"percentiles": []}, {"percentiles": 0.5},
                {"noise": -1.0}, {"activation": "relu6"}):
        with pytest.raises(xt.ParameterError):
            RoadMoRF(counted.model, **bad)
    table = np.zeros((2, 5), np.float32)
    with pytest.raises(xt.XaiToolboxError):
        RoadMoRF(counted.model)(table, [0, 1], table)
    assert counted.calls == 0
