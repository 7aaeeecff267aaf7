"""Grad-CAM and Grad-CAM++: analytic CAM equality, formula reference, layer selection."""

from __future__ import annotations

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.ops import interpolation_matrix
from xai_toolbox.testing import as_numpy, cnn, to_framework


def _images(n: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _features_and_head(framework: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Post-ReLU features of the test CNN's relu2 (N, K, h, w) and the fc weights (classes, K)."""
    model = cnn(framework, seed=5)
    batch = to_framework(x, framework)
    adapter = xt.adapt(model)
    acts, _, _ = adapter.layer_activations(adapter.to_model(batch), "relu2")
    acts = acts.numpy()
    if framework == "tf":
        acts = acts.transpose(0, 3, 1, 2)
        head = model.get_layer("fc").get_weights()[0].T
    else:
        head = model.fc.weight.detach().numpy()
    return acts, head


def _upsample(maps: np.ndarray, size: int) -> np.ndarray:
    m = interpolation_matrix(maps.shape[-1], size, "bilinear")
    return m @ maps @ m.T


def test_gradcam_on_gap_linear_equals_cam(framework: str) -> None:
    x = _images()
    acts, head = _features_and_head(framework, x)
    targets = np.array([0, 3, 1])
    maps = as_numpy(xt.GradCAM(cnn(framework, seed=5), layer="relu2")(to_framework(x, framework), targets))
    hw = acts.shape[2] * acts.shape[3]
    cam = np.maximum(np.einsum("nk,nkij->nij", head[targets], acts), 0) / hw  # α_k = w_k / (h·w)
    np.testing.assert_allclose(maps, _upsample(cam, 16), rtol=1e-4, atol=1e-6)


def test_gradcampp_matches_the_paper_formula(framework: str) -> None:
    x = _images(seed=1)
    acts, head = _features_and_head(framework, x)
    targets = np.array([2, 2, 0])
    maps = as_numpy(xt.GradCAMPlusPlus(cnn(framework, seed=5), layer="relu2")(to_framework(x, framework), targets))
    hw = acts.shape[2] * acts.shape[3]
    # relu2 feeds GAP + linear directly, except where the ReLU is inactive (gradient 0 there).
    g = np.broadcast_to((head[targets] / hw)[:, :, None, None], acts.shape).copy()
    denom = 2 * g**2 + acts.sum(axis=(2, 3), keepdims=True) * g**3
    alpha = np.where(denom != 0, g**2 / np.where(denom != 0, denom, 1), 0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
    cam = np.maximum(np.einsum("nk,nkij->nij", weights, acts), 0)
    np.testing.assert_allclose(maps, _upsample(cam, 16), rtol=1e-4, atol=1e-7)


def test_default_layer_is_the_last_spatial_one(framework: str) -> None:
    model = cnn(framework)
    adapter = xt.adapt(model)
    assert adapter.default_layer(adapter.to_model(to_framework(_images(1), framework))) == "relu2"
    batch = to_framework(_images(), framework)
    np.testing.assert_allclose(
        as_numpy(xt.GradCAM(model)(batch, [0, 1, 2])), as_numpy(xt.GradCAM(model, layer="relu2")(batch, [0, 1, 2]))
    )


def test_unknown_layer_lists_candidates(framework: str) -> None:
    model = cnn(framework)
    with pytest.raises(xt.LayerError, match=r"'conv9' not found.*'conv1'.*'relu2'"):
        xt.GradCAM(model, layer="conv9")(to_framework(_images(1), framework), [0])


def test_layer_without_spatial_output_is_refused(framework: str) -> None:
    layer = "fc"
    with pytest.raises(xt.LayerError, match="needs a spatial layer"):
        xt.GradCAM(cnn(framework), layer=layer)(to_framework(_images(1), framework), [0])


def _nested_keras(keras):
    """conv layers inside a Sequential backbone, itself inside a functional model."""
    backbone = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, padding="same", name="b_conv"),
         keras.layers.ReLU(name="b_relu"), keras.layers.Conv2D(5, 3, padding="same", name="b_conv2"),
         keras.layers.ReLU(name="b_relu2")],
        name="backbone",
    )
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def test_gradcam_in_nested_keras_model_by_name_and_default(keras) -> None:
    keras.utils.set_random_seed(0)
    model = _nested_keras(keras)
    x = _images(2).transpose(0, 2, 3, 1).copy()
    adapter = xt.adapt(model)
    assert adapter.default_layer(adapter.to_model(x)) == "b_relu2"
    assert "backbone/b_relu2" in adapter.layer_names()
    default = np.asarray(xt.GradCAM(model)(x, [0, 1]))
    by_name = np.asarray(xt.GradCAM(model, layer="b_relu2")(x, [0, 1]))
    by_path = np.asarray(xt.GradCAM(model, layer="backbone/b_relu2")(x, [0, 1]))
    np.testing.assert_allclose(default, by_name)
    np.testing.assert_allclose(by_name, by_path)
    assert default.shape == (2, 16, 16) and default.max() > 0
    inner = np.asarray(xt.GradCAM(model, layer="b_relu")(x, [0, 1]))
    assert np.abs(inner - by_name).max() > 1e-6


def test_gradcam_in_subclassed_keras_model(keras) -> None:
    keras.utils.set_random_seed(1)

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(2, name="head")

        def call(self, x):
            return self.head(self.pool(self.conv(x)))

    model = Net()
    x = _images(2).transpose(0, 2, 3, 1).copy()
    model(x)
    maps = np.asarray(xt.GradCAM(model)(x, [0, 1]))
    assert maps.shape == (2, 16, 16)
    np.testing.assert_allclose(maps, np.asarray(xt.GradCAM(model, layer="conv")(x, [0, 1])))


def test_torch_dotted_layer_names(torch) -> None:
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    model = torch.nn.Sequential()
    model.add_module("features", inner)
    model.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", torch.nn.Flatten())
    model.add_module("fc", torch.nn.Linear(4, 2))
    x = torch.from_numpy(_images(2))
    a = xt.GradCAM(model, layer="features.1")(x, [0, 1])
    b = xt.GradCAM(model, layer="features")(x, [0, 1])  # the block's output is the same tensor
    np.testing.assert_allclose(a.numpy(), b.numpy())
    assert xt.adapt(model).default_layer(xt.adapt(model).to_model(x)) == "features"


def test_frozen_torch_model_still_gives_cams(torch) -> None:
    model = cnn("torch")
    for p in model.parameters():
        p.requires_grad_(False)
    maps = xt.GradCAM(model)(torch.from_numpy(_images(2)), [0, 1])
    assert maps.shape == (2, 16, 16) and float(maps.max()) > 0
    assert all(not p.requires_grad for p in model.parameters())
