"""Layer-CAM, HiRes-CAM, XGrad-CAM: the conv → GAP → linear anchor, spatially varying
gradients from a linear head, twins, the contract, errors before any model call."""

from __future__ import annotations

import numpy as np
import pytest
from _cam_models import explain, feature_model, relu2_and_head, twin_disagreement, upsample
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox.testing import check_method, cnn, to_framework

METHODS = ("layercam", "hirescam", "xgradcam")


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def test_gap_linear_anchor(framework: str) -> None:
    """relu2 feeds GAP → fc, so ∂f_c/∂A_k(p) = w_k^c / Z everywhere (reference B9): HiRes-CAM
    and XGrad-CAM are Grad-CAM, Layer-CAM is Grad-CAM without the negative-weight channels."""
    x, targets = _images(), np.array([0, 3, 1])
    acts, head, _ = relu2_and_head(framework, x)
    gradient = head[targets][:, :, None, None] / (acts.shape[2] * acts.shape[3])
    gradcam = upsample(np.maximum((gradient * acts).sum(axis=1), 0), 16)
    layercam = upsample(np.maximum((np.maximum(gradient, 0) * acts).sum(axis=1), 0), 16)
    model = cnn(framework, seed=5)
    for name, expected in (("hirescam", gradcam), ("xgradcam", gradcam), ("layercam", layercam)):
        maps = explain(framework, model, name, x, targets, layer="relu2")
        np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7, err_msg=name)
        assert maps.max() > 0
    np.testing.assert_allclose(
        explain(framework, model, "hirescam", x, targets), explain(framework, model, "gradcam", x, targets),
        rtol=1e-4, atol=1e-7,
    )
    assert np.abs(layercam - gradcam).max() > 0.1 * gradcam.max()  # the anchor tells them apart


def test_element_wise_rules_with_position_dependent_gradients(framework: str) -> None:
    """A linear head on the flattened feature maps: ∂f_c/∂A = W_c, different at every position."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    x = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    x[:, 2] = np.abs(x[:, 2])  # a channel with a positive sum, and one summing to exactly 0:
    x[:, 3] = 0.0
    targets = np.array([1, 0, 1])
    model = feature_model(framework, weight)
    g = weight[targets].astype(np.float64)
    a = x.astype(np.float64)
    hires = np.maximum((g * a).sum(axis=1), 0)
    layer = np.maximum((np.maximum(g, 0) * a).sum(axis=1), 0)
    total = a.sum(axis=(2, 3))
    alpha = np.where(total != 0, (g * a).sum(axis=(2, 3)) / np.where(total != 0, total, 1), 0)
    xgrad = np.maximum((alpha[:, :, None, None] * a).sum(axis=1), 0)
    for name, expected in (("hirescam", hires), ("layercam", layer), ("xgradcam", xgrad)):
        maps = explain(framework, model, name, x, targets, layer="feat")
        np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5, err_msg=name)
        assert maps.max() > 0
    gradcam = explain(framework, model, "gradcam", x, targets, layer="feat")
    assert np.abs(gradcam - hires).max() > 0.1 * hires.max()  # element-wise differs from pooled


@pytest.mark.parametrize("name", METHODS)
def test_contract(pytestconfig: pytest.Config, name: str) -> None:
    check_method(xt.api.get_registry().method(name).cls, {"layer": "relu2"}, frameworks=pytestconfig.frameworks)


@pytest.mark.parametrize("name", METHODS)
def test_twins_agree_within_1e4_of_the_max(both: None, name: str) -> None:
    for layer in ("relu2", "conv2", "relu1"):
        assert twin_disagreement(name, layer) <= 1e-4, f"{name} at {layer}"


@pytest.mark.parametrize("name", METHODS)
def test_bad_layer_fails_before_any_model_call(framework: str, name: str) -> None:
    counted = CountedModel(framework)
    x = to_framework(_images(1), framework)
    with pytest.raises(xt.LayerError, match="not found"):
        xt.method(name, counted.model, layer="conv9")(x, [0])
    with pytest.raises(xt.LayerError, match="layer name"):
        xt.method(name, counted.model, layer=3)
    with pytest.raises(xt.ParameterError, match="batch_size"):
        xt.method(name, counted.model, batch_size=0)
    assert counted.calls == 0
    with pytest.raises(xt.LayerError, match="spatial layer"):
        xt.method(name, counted.model, layer="fc")(x, [0])
