"""Random Logit: SSIM against TensorFlow's, Xplique's recorded numbers, class-agnostic maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox.metrics.random_logit import RandomLogit, off_classes, ssim
from xai_toolbox.testing import check_metric, cnn, to_framework, twin_cnn

PEERS = Path(__file__).parent / "data" / "peers"


class ClassAgnostic(xt.AttributionMethod):
    """The image's mean over channels, whatever the target."""

    name = "class_agnostic"

    def explain_batch(self, x, targets):  # type: ignore[no-untyped-def]
        return x.mean(axis=self.adapter.channel_axis)


def test_ssim_matches_tensorflow(tf: Any) -> None:
    rng = np.random.default_rng(0)
    a = rng.random((3, 16, 16))
    b = a + 0.3 * rng.normal(size=a.shape)
    span = np.concatenate([a.reshape(3, -1), b.reshape(3, -1)], axis=1)
    span = span.max(axis=1) - span.min(axis=1)
    expected = [
        float(tf.image.ssim(a[i, ..., None], b[i, ..., None], max_val=span[i], filter_size=11, filter_sigma=1.5))
        for i in range(3)
    ]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-5)
    small = rng.random((2, 6, 6))  # the window shrinks to 5
    both = np.concatenate([small.reshape(2, -1), (small**2).reshape(2, -1)], axis=1)
    spans = both.max(axis=1) - both.min(axis=1)
    expected = [float(tf.image.ssim(small[i, ..., None], small[i, ..., None] ** 2, max_val=spans[i], filter_size=5)) for i in range(2)]
    np.testing.assert_allclose(ssim(small, small**2), expected, rtol=1e-5)
    np.testing.assert_allclose(ssim(np.ones((1, 8, 8)), np.ones((1, 8, 8))), [1.0])  # no range


def test_off_classes_are_uniform_over_the_others() -> None:
    labels = np.repeat(np.arange(4), 2000)
    drawn = off_classes(labels, 4, seed=0)
    assert np.all(drawn != labels) and drawn.min() == 0 and drawn.max() == 3
    counts = np.bincount(drawn[labels == 1], minlength=4)
    assert counts[1] == 0 and np.all(np.abs(counts[[0, 2, 3]] / 2000 - 1 / 3) < 0.04)


def test_matches_xplique(framework: str) -> None:
    """Xplique 2.0.2's RandomLogitMetric with its off-class draw replaced by the documented one."""
    recorded = json.loads((PEERS / "xplique_metrics.json").read_text())["random_logit"]
    inputs = np.load(PEERS / "inputs.npz")
    result = RandomLogit(cnn(framework), seed=recorded["seed"])(to_framework(inputs["images"], framework), inputs["labels"])
    np.testing.assert_array_equal(result.details["off_classes"], recorded["off_classes"])
    np.testing.assert_allclose(result.scores, recorded["scores"], atol=1e-4)


def test_class_agnostic_maps_score_one(framework: str) -> None:
    model = cnn(framework)
    x = to_framework(np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32), framework)
    result = RandomLogit(model, method=ClassAgnostic)(x, [0, 1, 2])
    np.testing.assert_allclose(result.scores, 1.0, atol=1e-9)
    assert result.family == "randomisation" and not result.higher_is_better


def test_twins_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=2)
    images = np.random.default_rng(3).random((3, 3, 16, 16), dtype=np.float32)
    a = RandomLogit(torch_model, method="gradcam")(to_framework(images, "torch"), [0, 1, 2])
    b = RandomLogit(keras_model, method="gradcam")(to_framework(images, "tf"), [0, 1, 2])
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_contract(pytestconfig: pytest.Config) -> None:
    check_metric(RandomLogit, frameworks=pytestconfig.frameworks)


def test_bad_configuration_fails_before_model_calls(framework: str) -> None:
    counted = CountedModel(framework)
    with pytest.raises(xt.ParameterError):
        RandomLogit(counted.model, window=0)
    with pytest.raises(xt.UnknownNameError):
        RandomLogit(counted.model, method="nope")
    assert counted.calls == 0
