"""Task scores (``xt.scores``): regression, multi-label, semantic segmentation, object
detection (D-RISE) and the ``(boxes, scores, labels)`` converter — analytic references on
linear models, the D-RISE numbers of the reference, twins, and bad targets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import linear_model, to_framework

RNG = np.random.default_rng(0)
X = RNG.random((3, 3, 4, 4), dtype=np.float32)


def native(a: np.ndarray, framework: str) -> Any:
    return to_framework(a, framework)


# -- regression ---------------------------------------------------------------------------------------
def test_regression_equals_the_output_it_explains(framework: str) -> None:
    w = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)
    model, x = linear_model(framework, w), native(X, framework)
    method = lambda **kw: xt.GradientInput(model, **kw)  # noqa: E731
    single = linear_model(framework, w[:1])
    np.testing.assert_allclose(
        np.asarray(xt.GradientInput(single, score_fn=xt.scores.Regression())(x)),
        np.asarray(xt.GradientInput(single)(x, 0)), rtol=1e-5, atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(method(score_fn=xt.scores.Regression(index=2))(x)), np.asarray(method()(x, 2)), rtol=1e-5, atol=1e-6
    )
    d = np.array([1.0, -1.0, 0.5], np.float32)
    np.testing.assert_allclose(
        np.asarray(method(score_fn=xt.scores.Regression(direction=d))(x)),
        np.asarray(method()(x, np.tile(d, (3, 1)))), rtol=1e-5, atol=1e-6,
    )
    # gradient × input of a linear output sums to the output minus its value at 0
    got = np.asarray(method(score_fn=xt.scores.Regression(direction=d))(x)).sum(axis=(1, 2))
    np.testing.assert_allclose(got, X.reshape(3, -1) @ (d @ w.reshape(3, -1)), rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(method(score_fn=xt.scores.Regression())(x, [0, 1, 2])), np.asarray(method()(x, [0, 1, 2])),
        rtol=1e-5, atol=1e-6,
    )
    with pytest.raises(xt.TargetError, match="index=...|direction"):
        method(score_fn=xt.scores.Regression())(x)
    # black-box methods and metrics take the same score
    occlusion = xt.Occlusion(single, patch_size=2, stride=2, score_fn=xt.scores.Regression())(x)
    np.testing.assert_allclose(np.asarray(occlusion), np.asarray(xt.Occlusion(single, patch_size=2, stride=2)(x, 0)), atol=1e-6)
    maps = np.asarray(xt.GradientInput(single)(x, 0))
    deletion = xt.Deletion(single, steps=4, score_fn=xt.scores.Regression())(x, None, maps)
    assert deletion.mean == pytest.approx(xt.Deletion(single, steps=4)(x, 0, maps).mean, rel=1e-6)


def test_regression_of_one_dimensional_outputs(torch: Any) -> None:
    w = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    two_d = linear_model("torch", w)

    class Flat(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return two_d(x)[:, 0]  # (N,)

    maps = xt.IntegratedGradients(Flat(), score_fn=xt.scores.Regression())(X)
    np.testing.assert_allclose(maps, xt.IntegratedGradients(two_d)(X, 0), rtol=1e-5, atol=1e-6)


def test_regression_parameters() -> None:
    with pytest.raises(xt.ParameterError, match="index"):
        xt.scores.Regression(index=-1)
    with pytest.raises(xt.ParameterError, match="not both"):
        xt.scores.Regression(index=0, direction=[1.0])
    with pytest.raises(xt.ParameterError, match="direction"):
        xt.scores.Regression(direction=[[1.0]])


# -- multi-label ---------------------------------------------------------------------------------------
def test_multilabel_sigmoid_gradient_is_analytic(framework: str) -> None:
    w = RNG.standard_normal((4, 3, 4, 4)).astype(np.float32) * 0.3
    model, x = linear_model(framework, w), native(X, framework)
    labels = [[0, 3], [2], [1, 2, 3]]
    hot = np.zeros((3, 4), np.float32)
    for i, row in enumerate(labels):
        hot[i, row] = 1
    maps = np.asarray(xt.GradientInput(model, score_fn=xt.scores.MultiLabel())(x, labels))
    z = X.reshape(3, -1) @ w.reshape(4, -1).T
    s = 1 / (1 + np.exp(-z))
    grad = ((s * (1 - s) * hot) @ w.reshape(4, -1)).reshape(X.shape)          # Σ_k σ'(z_k) t_k W_k
    expected = (grad * X).sum(axis=1)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(xt.GradientInput(model, score_fn=xt.scores.MultiLabel())(x, hot)), maps, rtol=1e-5, atol=1e-7
    )
    raw = np.asarray(xt.GradientInput(model, score_fn=xt.scores.MultiLabel(activation=None))(x, hot))
    np.testing.assert_allclose(raw, np.asarray(xt.GradientInput(model)(x, hot)), rtol=1e-5, atol=1e-6)
    with pytest.raises(xt.TargetError, match="0..3"):
        xt.GradientInput(model, score_fn=xt.scores.MultiLabel())(x, [[0], [4], [1]])
    with pytest.raises(xt.ParameterError, match="activation"):
        xt.scores.MultiLabel(activation="softmax")


# -- semantic segmentation -----------------------------------------------------------------------------
def segmenter(framework: str, w: np.ndarray) -> Any:
    """A 1 × 1 convolution: class maps ``(N, K, H, W)`` / ``(N, H, W, K)``."""
    if framework == "torch":
        import torch

        conv = torch.nn.Conv2d(3, w.shape[0], 1, bias=False)
        conv.weight.data = torch.from_numpy(w[:, :, None, None].copy())
        return conv.eval()
    import keras

    inputs = keras.Input((4, 4, 3))
    conv = keras.layers.Conv2D(w.shape[0], 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([w.T[None, None]])
    return model


def test_segmentation_explains_a_class_over_a_region(framework: str) -> None:
    w = RNG.standard_normal((5, 3)).astype(np.float32)
    model, x = segmenter(framework, w), native(X, framework)
    region = np.zeros((3, 4, 4), bool)
    region[:, 1:3, 0:2] = True
    axis = 1 if framework == "torch" else -1
    targets = xt.scores.class_region(region, [2, 2, 4], 5, channel_axis=axis)
    assert targets.shape == ((3, 5, 4, 4) if axis == 1 else (3, 4, 4, 5))
    maps = np.asarray(xt.Saliency(model, score_fn=xt.scores.Segmentation())(x, targets))
    # the mean of class c over R moves with pixel p ∈ R by w_c / |R| on each channel: nothing outside
    expected = np.where(region, np.abs(w[[2, 2, 4]]).max(axis=1)[:, None, None] / 4, 0.0)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-7)
    summed = np.asarray(xt.Saliency(model, score_fn=xt.scores.Segmentation(reduction="sum"))(x, targets))
    np.testing.assert_allclose(summed, 4 * maps, rtol=1e-5, atol=1e-7)
    rise = np.asarray(xt.Rise(model, nb_samples=64, grid_size=2, score_fn=xt.scores.Segmentation())(x, targets))
    assert rise.shape == (3, 4, 4) and np.all(np.isfinite(rise))
    with pytest.raises(xt.TargetError, match="outputs' shape"):
        xt.Saliency(model, score_fn=xt.scores.Segmentation())(x, targets[:, :2])
    with pytest.raises(xt.TargetError, match="needs targets"):
        xt.Saliency(model, score_fn=xt.scores.Segmentation())(x)


def test_segmentation_twins(both: None) -> None:
    w = RNG.standard_normal((5, 3)).astype(np.float32)
    region = np.zeros((3, 4, 4))
    region[:, :2] = 1
    maps = {}
    for fw, axis in (("torch", 1), ("tf", -1)):
        targets = xt.scores.class_region(region, 1, 5, channel_axis=axis)
        maps[fw] = np.asarray(xt.IntegratedGradients(segmenter(fw, w), score_fn=xt.scores.Segmentation())(
            native(X, fw), targets))
    np.testing.assert_allclose(maps["torch"], maps["tf"], rtol=1e-4, atol=1e-6)


# -- object detection --------------------------------------------------------------------------------
def row(box: list[float], objectness: float, classes: list[float]) -> list[float]:
    return [*box, objectness, *classes]


def test_drise_score_numbers() -> None:
    iou_only = xt.scores.Detection(components=("iou",))
    ref = np.array([[row([0, 0, 2, 2], 1, [1, 0, 0])]], np.float32)
    pred = np.array([[row([1, 1, 3, 3], 1, [1, 0, 0])]], np.float32)
    assert float(iou_only(pred, ref)[0]) == pytest.approx(1 / (7 + 1e-4), rel=1e-6)
    same = np.array([[row([0, 0, 2, 2], 0.9, [0.8, 0.2, 0.0])]], np.float32)
    cos = 0.8 / (np.hypot(0.8, 0.2) + 1e-4)
    assert float(xt.scores.Detection()(same, ref)[0]) == pytest.approx(4 / (4 + 1e-4) * 0.9 * cos, rel=1e-5)
    # best prediction per reference, mean over references; zero rows are padding
    preds = np.array([[row([0, 0, 2, 2], 0.5, [1, 0, 0]), row([0, 0, 2, 2], 0.8, [1, 0, 0]), [0] * 8]], np.float32)
    refs = np.array([[row([0, 0, 2, 2], 1, [1, 0, 0]), row([5, 5, 6, 6], 1, [1, 0, 0]), [0] * 8]], np.float32)
    expected = (4 / (4 + 1e-4) * 0.8 / (1 + 1e-4) + 0.0) / 2
    assert float(xt.scores.Detection()(preds, refs)[0]) == pytest.approx(expected, rel=1e-5)
    assert float(xt.scores.Detection()(preds, np.zeros((1, 2, 8), np.float32))[0]) == 0.0
    assert float(xt.scores.Detection()(preds, refs[:, 0])[0]) == pytest.approx(4 / (4 + 1e-4) * 0.8 / (1 + 1e-4), rel=1e-5)
    with pytest.raises(xt.TargetError, match="reference boxes"):
        xt.scores.Detection()(preds, np.zeros((1, 2, 7), np.float32))
    with pytest.raises(xt.ScoreFunctionError, match="DetectionOutputs"):
        xt.scores.Detection()(np.zeros((1, 8), np.float32), refs)
    with pytest.raises(xt.ParameterError, match="iou"):
        xt.scores.Detection(components=("objectness",))


def toy_detector(torch: Any, post_nms: bool = False) -> Any:
    """Two fixed boxes on 8 × 8 images; each box's objectness is the sigmoid of the mean
    intensity inside it (so the first box depends on the top-left quarter only)."""

    class Detector(torch.nn.Module):
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 8.0, 8.0]])

        def forward(self, x: Any) -> Any:
            inside = torch.stack([x[:, :, :4, :4].mean(dim=(1, 2, 3)), x[:, :, 4:, 4:].mean(dim=(1, 2, 3))], dim=1)
            objectness = torch.sigmoid(8 * (inside - 0.5))                             # (N, 2)
            if post_nms:  # torchvision style: one dict per image
                return [{"boxes": self.boxes, "scores": o, "labels": torch.tensor([1, 0])} for o in objectness]
            classes = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(len(x), 2, 2)
            return torch.cat([self.boxes.expand(len(x), 2, 4), objectness[..., None], classes], dim=2)

    return Detector().eval()


def test_drise_with_rise_and_gradients_points_at_the_box(torch: Any) -> None:
    images = np.full((2, 1, 8, 8), 0.6, np.float32)
    reference = np.array([row([0, 0, 4, 4], 1, [0, 1])] * 2, np.float32)          # the first box
    model = toy_detector(torch)
    rise = xt.Rise(model, nb_samples=256, grid_size=4, score_fn=xt.scores.Detection(), seed=0)(images, reference)
    assert rise[:, :4, :4].min() > rise[:, 4:, 4:].max()  # RISE: E[score | pixel kept]
    saliency = xt.Saliency(model, score_fn=xt.scores.Detection())(images, reference)
    assert saliency[:, :4, :4].min() > 0 and saliency[:, 4:, :].max() == 0 and saliency[:, :, 4:].max() == 0


def test_detection_outputs_converter(torch: Any) -> None:
    images = np.full((2, 1, 8, 8), 0.6, np.float32)
    images[1, :, :4, :4] = 0.2
    convert = xt.scores.DetectionOutputs(2, max_boxes=3)
    raw = toy_detector(torch, post_nms=True)(torch.from_numpy(images))
    rows = convert(raw).numpy()
    assert rows.shape == (2, 3, 7)
    np.testing.assert_allclose(rows[:, :2, :4], [[[0, 0, 4, 4], [4, 4, 8, 8]]] * 2)
    np.testing.assert_allclose(rows[:, :2, 5:], [[[0, 1], [1, 0]]] * 2)
    assert np.all(rows[:, 2] == 0)  # padding
    dense = toy_detector(torch)(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(rows[:, :2], dense, atol=1e-6)
    batched = convert((torch.from_numpy(dense[:, :, :4]), torch.from_numpy(dense[:, :, 4]), torch.tensor([[1, 0]] * 2)))
    np.testing.assert_allclose(batched.numpy(), rows, atol=1e-6)
    assert xt.scores.DetectionOutputs(2, max_boxes=1)(raw).shape == (2, 1, 7)
    # as output= of any method: the post-NMS detector explained like the dense one
    reference = np.array([row([0, 0, 4, 4], 1, [0, 1])] * 2, np.float32)
    a = xt.Saliency(toy_detector(torch, post_nms=True), output=convert, score_fn=xt.scores.Detection())(images, reference)
    b = xt.Saliency(toy_detector(torch), score_fn=xt.scores.Detection())(images, reference)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(xt.ScoreFunctionError, match="boxes"):
        convert({"boxes": 1})
