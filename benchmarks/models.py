"""A ResNet-18-like CNN built identically in PyTorch and Keras, with random NumPy weights.

The benchmark model: a stem (7×7 stride-2 conv, batch norm, ReLU, 3×3 stride-2 max pool),
four stages of two basic residual blocks (widths ``w, 2w, 4w, 8w``; stages 2–4 downsample
with a 1×1 stride-2 projection), global average pooling and a linear classifier. With
``width=64`` this is ResNet-18's topology; the benchmark default ``width=32`` keeps a run on
a laptop CPU short while staying a realistic mid-size convnet (~2.8 M parameters).

Both frameworks get the same weights (drawn once with NumPy, He-normal convs, random batch
norm statistics) and compute the same function: stride-2 layers use explicit symmetric zero
padding in Keras (``"same"`` pads asymmetrically for even sizes), and the stem's max pool
follows a ReLU, so zero padding equals PyTorch's ``-inf`` padding there. Nothing is
downloaded.

Example:
    >>> from benchmarks.models import resnet
    >>> model = resnet("torch", size=112)           # torch.nn.Module in eval mode, NCHW
    >>> keras_model = resnet("tf", size=112)        # keras.Model, NHWC, same function
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Blocks per stage (ResNet-18: 2, 2, 2, 2).
BLOCKS = (2, 2, 2, 2)
BN_EPS = 1e-5


def _stage_specs(width: int) -> list[tuple[str, int, int, int]]:
    """``(block name, in channels, out channels, stride)`` for every residual block."""
    specs = []
    c_in = width
    for stage, n_blocks in enumerate(BLOCKS):
        c_out = width * 2**stage
        for b in range(n_blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            specs.append((f"layer{stage + 1}.{b}", c_in, c_out, stride))
            c_in = c_out
    return specs


def resnet_weights(
    seed: int = 0, *, width: int = 32, channels: int = 3, classes: int = 10
) -> dict[str, np.ndarray]:
    """Random weights in PyTorch layout (``state_dict`` names), drawn with NumPy only."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        std = np.sqrt(2.0 / (c_in * k * k))  # He-normal: activations keep their scale
        weights[f"{name}.weight"] = (rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32)

    def bn(name: str, c: int) -> None:
        weights[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        weights[f"{name}.bias"] = rng.uniform(-0.1, 0.1, c).astype(np.float32)
        weights[f"{name}.running_mean"] = rng.uniform(-0.1, 0.1, c).astype(np.float32)
        weights[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)

    conv("conv1", width, channels, 7)
    bn("bn1", width)
    for name, c_in, c_out, stride in _stage_specs(width):
        conv(f"{name}.conv1", c_out, c_in, 3)
        bn(f"{name}.bn1", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        bn(f"{name}.bn2", c_out)
        if stride != 1 or c_in != c_out:
            conv(f"{name}.downsample.0", c_out, c_in, 1)
            bn(f"{name}.downsample.1", c_out)
    bound = 1.0 / np.sqrt(8 * width)
    weights["fc.weight"] = rng.uniform(-bound, bound, (classes, 8 * width)).astype(np.float32)
    weights["fc.bias"] = rng.uniform(-bound, bound, classes).astype(np.float32)
    return weights


def resnet(
    framework: str,
    seed: int = 0,
    *,
    size: int = 112,
    width: int = 32,
    channels: int = 3,
    classes: int = 10,
) -> Any:
    """The benchmark ResNet in ``framework`` (``"torch"`` or ``"tf"``), in inference mode."""
    weights = resnet_weights(seed, width=width, channels=channels, classes=classes)
    return resnet_from_weights(framework, weights, size=size, width=width, channels=channels, classes=classes)


def resnet_from_weights(
    framework: str,
    weights: dict[str, np.ndarray],
    *,
    size: int = 112,
    width: int = 32,
    channels: int = 3,
    classes: int = 10,
) -> Any:
    """The benchmark ResNet with given weights (PyTorch layout, e.g. read back from an .npz).

    Needs only NumPy and the framework (no xai-toolbox): the Xplique side-by-side worker
    builds the same model with it in its own environment.
    """
    if framework == "torch":
        return _torch_resnet(weights, width=width, channels=channels, classes=classes)
    if framework == "tf":
        return _keras_resnet(weights, size=size, width=width, channels=channels, classes=classes)
    raise ValueError(f"framework must be 'torch' or 'tf', got {framework!r}")


def parameter_count(weights: dict[str, np.ndarray]) -> int:
    """Trainable parameters (batch-norm running statistics excluded)."""
    return int(sum(w.size for k, w in weights.items() if "running_" not in k))


# -- PyTorch -------------------------------------------------------------------------------
def _torch_resnet(weights: dict[str, np.ndarray], *, width: int, channels: int, classes: int) -> Any:
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out, eps=BN_EPS)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out, eps=BN_EPS)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        """torchvision-style ResNet (a custom ``forward``, as users' models usually have)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages: dict[str, list[nn.Module]] = {}
            for name, c_in, c_out, stride in _stage_specs(width):
                stages.setdefault(name.split(".")[0], []).append(BasicBlock(c_in, c_out, stride))
            for stage, blocks in stages.items():
                self.add_module(stage, nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8 * width, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    model = ResNet()
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the batch-norm counters are not drawn; anything else missing is a bug here.
    assert all(k.endswith("num_batches_tracked") for k in missing) and not unexpected, (missing, unexpected)
    return model.eval()


# -- Keras ---------------------------------------------------------------------------------
def _keras_resnet(
    weights: dict[str, np.ndarray], *, size: int, width: int, channels: int, classes: int
) -> Any:
    import keras
    from keras import layers

    def kname(name: str) -> str:
        return name.replace(".", "_")

    def conv(h: Any, name: str, filters: int, k: int, stride: int) -> Any:
        pad = k // 2
        if stride == 1:
            return layers.Conv2D(filters, k, padding="same", use_bias=False, name=kname(name))(h)
        if pad:
            h = layers.ZeroPadding2D(pad, name=kname(name) + "_pad")(h)
        return layers.Conv2D(filters, k, strides=stride, use_bias=False, name=kname(name))(h)

    def bn(h: Any, name: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPS, name=kname(name))(h)

    inputs = keras.Input((size, size, channels), name="input")
    h = layers.ReLU(name="relu")(bn(conv(inputs, "conv1", width, 7, 2), "bn1"))
    h = layers.ZeroPadding2D(1, name="maxpool_pad")(h)  # after a ReLU: zeros act as -inf
    h = layers.MaxPooling2D(3, 2, name="maxpool")(h)
    for name, c_in, c_out, stride in _stage_specs(width):
        identity = h
        if stride != 1 or c_in != c_out:
            identity = bn(conv(h, f"{name}.downsample.0", c_out, 1, stride), f"{name}.downsample.1")
        out = layers.ReLU(name=kname(name) + "_relu1")(bn(conv(h, f"{name}.conv1", c_out, 3, stride), f"{name}.bn1"))
        out = bn(conv(out, f"{name}.conv2", c_out, 3, 1), f"{name}.bn2")
        h = layers.ReLU(name=kname(name) + "_relu2")(layers.Add(name=kname(name) + "_add")([out, identity]))
    h = layers.GlobalAveragePooling2D(name="avgpool")(h)
    outputs = layers.Dense(classes, name="fc")(h)
    model = keras.Model(inputs, outputs, name="bench_resnet")

    for layer in model.layers:
        torch_name = next((k[: -len(".weight")] for k in weights if kname(k) == layer.name + "_weight"), None)
        if torch_name is None:
            continue
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([weights[f"{torch_name}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")])
        elif isinstance(layer, layers.Dense):
            layer.set_weights([weights["fc.weight"].T, weights["fc.bias"]])
        else:  # conv kernels (out, in, kh, kw) → (kh, kw, in, out)
            layer.set_weights([weights[f"{torch_name}.weight"].transpose(2, 3, 1, 0)])
    return model
