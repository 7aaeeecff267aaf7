"""The JAX test models (see :func:`xai_toolbox.backends.test_models.jax_model`): the test CNN as a
Flax NNX module, a Flax Linen module, a ``jax.numpy`` function of its parameters and a
``jax.jit`` function, from PyTorch-layout NumPy weights.

Layers keep the PyTorch twin's names (``conv1``, ``relu1``, ``pool1``, ``conv2``, ``relu2``,
``gap``, ``fc``), so CAMs take the same ``layer=`` everywhere.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .jax_model import JaxModel
from .test_models import keras_layout

FLAVOURS = ("nnx", "linen", "function", "jit")


def _params(weights: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Flax-layout parameters (conv ``(kh, kw, in, out)``, dense ``(in, out)``) by layer."""
    return {
        name: {"kernel": jnp.asarray(keras_layout(weights[f"{name}.weight"])), "bias": jnp.asarray(weights[f"{name}.bias"])}
        for name in ("conv1", "conv2", "fc")
    }


def _conv(x: Any, p: dict[str, Any]) -> Any:
    out = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + p["bias"]


def _pool(x: Any) -> Any:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def cnn_function(params: dict[str, Any], x: Any) -> Any:
    """The test CNN in ``jax.numpy``: ``fn(params, x)`` on NHWC images."""
    h = _pool(jax.nn.relu(_conv(x, params["conv1"])))
    h = jax.nn.relu(_conv(h, params["conv2"])).mean(axis=(1, 2))
    return h @ params["fc"]["kernel"] + params["fc"]["bias"]


def cnn(flavour: str, weights: dict[str, np.ndarray]) -> Any:
    params = _params(weights)
    if flavour == "function":
        return JaxModel(cnn_function, params)
    if flavour == "jit":
        return jax.jit(functools.partial(cnn_function, params))
    if flavour == "linen":
        module = _linen_classes()["Cnn"](width=int(params["conv1"]["bias"].shape[0]), classes=int(params["fc"]["bias"].shape[0]))
        return functools.partial(module.apply, {"params": params})
    if flavour == "nnx":
        return _nnx_cnn(params)
    raise ValueError(f"unknown JAX test model flavour {flavour!r}; one of {FLAVOURS}")


def _linear_function(params: dict[str, Any], x: Any) -> Any:
    out = x.reshape(x.shape[0], -1) @ params["linear"]["kernel"]
    return out + params["linear"]["bias"] if "bias" in params["linear"] else out


def linear(kernel: np.ndarray, bias: np.ndarray | None) -> JaxModel:
    """``x ↦ flatten(x) · kernel (+ bias)`` as a ``JaxModel`` (its layer: ``"linear"``)."""
    params = {"kernel": jnp.asarray(kernel)}
    if bias is not None:
        params["bias"] = jnp.asarray(bias)
    return JaxModel(_linear_function, {"linear": params})


@functools.cache
def _linen_classes() -> dict[str, type]:
    import flax.linen as nn

    class Relu(nn.Module):
        def __call__(self, x: Any) -> Any:
            return nn.relu(x)

    class Pool(nn.Module):
        def __call__(self, x: Any) -> Any:
            return nn.max_pool(x, (2, 2), strides=(2, 2))

    class Gap(nn.Module):
        def __call__(self, x: Any) -> Any:
            return x.mean(axis=(1, 2))

    class Cnn(nn.Module):
        width: int
        classes: int

        @nn.compact
        def __call__(self, x: Any) -> Any:
            h = nn.Conv(self.width, (3, 3), padding="SAME", name="conv1")(x)
            h = Pool(name="pool1")(Relu(name="relu1")(h))
            h = nn.Conv(2 * self.width, (3, 3), padding="SAME", name="conv2")(h)
            h = Gap(name="gap")(Relu(name="relu2")(h))
            return nn.Dense(self.classes, name="fc")(h)

    return {"Cnn": Cnn}


@functools.cache
def _nnx_classes() -> dict[str, type]:
    from flax import nnx

    class Relu(nnx.Module):
        def __call__(self, x: Any) -> Any:
            return nnx.relu(x)

    class Pool(nnx.Module):
        def __call__(self, x: Any) -> Any:
            return _pool(x)

    class Gap(nnx.Module):
        def __call__(self, x: Any) -> Any:
            return x.mean(axis=(1, 2))

    class Cnn(nnx.Module):
        def __init__(self, channels: int, width: int, classes: int, rngs: Any) -> None:
            # Zeros first (the weights are set next): random initialisers would compile XLA's
            # random number kernels for nothing.
            zeros = {"kernel_init": nnx.initializers.zeros_init(), "bias_init": nnx.initializers.zeros_init(), "rngs": rngs}
            self.conv1 = nnx.Conv(channels, width, (3, 3), padding="SAME", **zeros)
            self.relu1 = Relu()
            self.pool1 = Pool()
            self.conv2 = nnx.Conv(width, 2 * width, (3, 3), padding="SAME", **zeros)
            self.relu2 = Relu()
            self.gap = Gap()
            self.fc = nnx.Linear(2 * width, classes, **zeros)

        def __call__(self, x: Any) -> Any:
            h = self.pool1(self.relu1(self.conv1(x)))
            return self.fc(self.gap(self.relu2(self.conv2(h))))

    return {"Cnn": Cnn}


def _nnx_cnn(params: dict[str, dict[str, Any]]) -> Any:
    from flax import nnx

    kernel = params["conv1"]["kernel"]
    width, channels, classes = int(kernel.shape[-1]), int(kernel.shape[-2]), int(params["fc"]["bias"].shape[0])
    model = _nnx_classes()["Cnn"](channels, width, classes, nnx.Rngs(0))
    for name, values in params.items():
        layer = getattr(model, name)
        for attribute in ("kernel", "bias"):
            variable = getattr(layer, attribute)
            if hasattr(variable, "set_value"):  # flax >= 0.12 (the .value setter is deprecated)
                variable.set_value(values[attribute])
            else:
                variable.value = values[attribute]
    return model
