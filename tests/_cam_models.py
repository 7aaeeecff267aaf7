"""Models whose CAM layer outputs the image itself, for the CAM families' analytic tests.

``feature_model`` is ``feat (identity) → head``: the layer ``"feat"`` hands the input image
``(K, h, w)`` on as its activations, so a test chooses the feature maps exactly, and the head
is either global average pooling and a linear layer (the conv → GAP → linear anchor) or a
linear layer on the flattened maps (gradients that vary over the positions). Twins in PyTorch
and Keras compute the same function (other frameworks skip the tests that use them).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.ops import interpolation_matrix
from xai_toolbox.testing import as_numpy, cnn, cnn_weights, to_framework


def feature_model(framework: str, weight: np.ndarray, bias: np.ndarray | None = None) -> Any:
    """``f(A) = W · GAP(A) + b`` for ``weight`` ``(classes, K)``, or ``f(A) = W · vec(A) + b``
    for ``weight`` ``(classes, K, h, w)`` (channels first), with ``A`` the image, exposed as
    layer ``"feat"``."""
    if framework not in ("torch", "tf"):
        pytest.skip(f"the feature models are built in PyTorch and Keras, not {framework}")
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)
    pooled = weight.ndim == 2
    flat = weight.reshape(weight.shape[0], -1)
    if framework == "torch":
        import torch

        fc = torch.nn.Linear(flat.shape[1], flat.shape[0])
        with torch.no_grad():
            fc.weight.copy_(torch.from_numpy(flat))
            fc.bias.copy_(torch.from_numpy(bias))
        reduce = torch.nn.AdaptiveAvgPool2d(1) if pooled else torch.nn.Identity()
        return torch.nn.Sequential(
            OrderedDict(feat=torch.nn.Identity(), reduce=reduce, flatten=torch.nn.Flatten(), fc=fc)
        ).eval()
    import keras

    k = weight.shape[1]
    if pooled:
        inputs = keras.Input((None, None, k))
        kernel = flat.T
    else:  # Keras flattens (h, w, K): permute the weight to match
        inputs = keras.Input((weight.shape[2], weight.shape[3], k))
        kernel = weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1).T
    feat = keras.layers.Identity(name="feat")(inputs)
    reduce = keras.layers.GlobalAveragePooling2D(name="reduce") if pooled else keras.layers.Flatten(name="reduce")
    dense = keras.layers.Dense(kernel.shape[1], name="fc")
    model = keras.Model(inputs, dense(reduce(feat)))
    dense.set_weights([kernel, bias])
    return model


def explain(framework: str, model: Any, name: str, images: np.ndarray, targets: Any, **params: Any) -> np.ndarray:
    """``name``'s maps of NumPy NCHW ``images`` as NumPy."""
    return as_numpy(xt.method(name, model, **params)(to_framework(images, framework), targets))


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (half-pixel) upsampling of square maps ``(N, h, h)``, as the CAM base does."""
    m = interpolation_matrix(maps.shape[-1], size, "bilinear")
    return m @ maps @ m.T


def relu2_and_head(
    framework: str, images: np.ndarray, seed: int = 5, layer: str = "relu2"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test CNN's relu2 activations ``(N, K, h, w)`` (post-ReLU, feeding GAP → fc; or
    another ``layer``'s), its fc weights ``(classes, K)`` and its logits ``(N, classes)``."""
    model = cnn(framework, seed=seed)
    adapter = xt.adapt(model)
    acts, _, outputs = adapter.layer_activations(adapter.to_model(to_framework(images, framework)), layer)
    acts = xt.extend.channels_first(acts, adapter.channel_axis).numpy()
    head = cnn_weights(seed)["fc.weight"]  # every framework's test CNN is built from these
    return acts.astype(np.float64), head.astype(np.float64), outputs.numpy().astype(np.float64)


def twin_disagreement(name: str, layer: str, seeds: tuple[int, ...] = (0, 1), **params: Any) -> float:
    """The largest difference between the maps of twin PyTorch and Keras CNNs, relative to
    the largest map value, over a few weight seeds."""
    worst = 0.0
    for seed in seeds:
        images = np.random.default_rng(seed).random((4, 3, 16, 16), dtype=np.float32)
        maps = [
            explain(framework, cnn(framework, seed), name, images, [0, 1, 2, 3], layer=layer, batch_size=5, **params)
            for framework in ("torch", "tf")
        ]
        scale = max(float(np.abs(maps[0]).max()), 1e-30)
        worst = max(worst, float(np.abs(maps[0] - maps[1]).max()) / scale)
        assert np.abs(maps[0]).max() > 0, f"{name} gave empty maps on seed {seed}: nothing compared"
    return worst


__all__ = ["explain", "feature_model", "relu2_and_head", "twin_disagreement", "upsample"]
