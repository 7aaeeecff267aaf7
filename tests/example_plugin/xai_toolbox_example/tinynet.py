"""TinyNet: a stand-in for an inference engine such as ONNX Runtime — NumPy arrays in and out,
named intermediate outputs, no gradients. The example adapter plugin serves it.

A :class:`TinyNet` is a list of named layers run in order on ``(N, C, H, W)`` float32 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Conv3x3:
    """3×3 convolution, stride 1, zero padding 1 (PyTorch's ``Conv2d(c, o, 3, padding=1)``)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.weight, self.bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        if c != self.weight.shape[1]:
            raise ValueError(f"expected {self.weight.shape[1]} input channels, got {c}")
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n c h w 3 3
        out = np.einsum("nchwij,ocij->nohw", windows, self.weight, optimize=True)
        return (out + self.bias[None, :, None, None]).astype(np.float32)

    def parameters(self) -> list[np.ndarray]:
        return [self.weight, self.bias]


class Dense:
    """``x @ W.T + b`` (PyTorch's ``Linear``)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.weight, self.bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.weight.T + self.bias).astype(np.float32)

    def parameters(self) -> list[np.ndarray]:
        return [self.weight, self.bias]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def max_pool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x[:, :, : h - h % 2, : w - w % 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def global_average(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3))


class TinyNet:
    """Named layers run in order; ``run(x, outputs=[...])`` also returns intermediate outputs.

    Example:
        >>> net = TinyNet([("conv", Conv3x3(w, b)), ("relu", relu)])
        >>> logits, (features,) = net.run(x, ["conv"])
    """

    def __init__(self, layers: Sequence[tuple[str, Any]]) -> None:
        self.layers = list(layers)

    def run(
        self, x: np.ndarray, outputs: Sequence[str] = (), replace: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The final output and the outputs of the layers named in ``outputs``; ``replace``
        substitutes given arrays for the outputs of the layers it names."""
        captured: dict[str, np.ndarray] = {}
        replace = replace or {}
        for name, layer in self.layers:
            x = layer(x)
            if name in replace:
                if replace[name].shape != x.shape:
                    raise ValueError(f"{name} produces {x.shape}, got a replacement of {replace[name].shape}")
                x = replace[name]
            if name in outputs:
                captured[name] = x
        missing = [n for n in outputs if n not in captured]
        if missing:
            raise KeyError(f"no layer named {missing}")
        return x, [captured[n] for n in outputs]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)[0]


def tiny_cnn(weights: dict[str, np.ndarray]) -> TinyNet:
    """The test CNN of :func:`xai_toolbox.testing.cnn` as a TinyNet (same weights, same function)."""
    return TinyNet([
        ("conv1", Conv3x3(weights["conv1.weight"], weights["conv1.bias"])),
        ("relu1", relu),
        ("pool1", max_pool2),
        ("conv2", Conv3x3(weights["conv2.weight"], weights["conv2.bias"])),
        ("relu2", relu),
        ("gap", global_average),
        ("fc", Dense(weights["fc.weight"], weights["fc.bias"])),
    ])
