"""The test models of the built-in frameworks, for :mod:`xai_toolbox.testing`.

Each builder takes an architecture name and its options (see
:data:`xai_toolbox.backends.frameworks.TestModelBuilder`) and builds the model from NumPy
weights given in PyTorch's layout, so twin models in every framework compute the same function.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def keras_layout(weight: np.ndarray) -> np.ndarray:
    """A PyTorch weight in Keras' layout: conv ``(out, in, *k)`` → ``(*k, in, out)``, dense ``.T``.

    Example:
        >>> keras_layout(np.zeros((8, 3, 5, 5))).shape
        (5, 5, 3, 8)
    """
    if weight.ndim == 4:
        return weight.transpose(2, 3, 1, 0)
    if weight.ndim == 3:
        return weight.transpose(2, 1, 0)
    return weight.T


def canonical_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch layout of a Keras or Flax kernel's shape: ``(*k, in, out)`` → ``(out, in, *k)``,
    dense ``(in, out)`` → ``(out, in)`` (the inverse of :func:`keras_layout`).

    Example:
        >>> canonical_shape((5, 5, 3, 8))
        (8, 3, 5, 5)
    """
    if len(shape) >= 3:
        *k, cin, cout = shape
        return (cout, cin, *k)
    return tuple(reversed(shape))


def _unknown(architecture: str) -> ValueError:
    return ValueError(
        f"no test model {architecture!r}; the built-in frameworks build 'cnn', 'linear' and 'demo' "
        "(JAX: 'cnn' and 'linear')"
    )


#: Environment variable naming the device the PyTorch test models live on (default ``cpu``).
#: ``pytest --device cuda`` sets it, so the suite runs its models on a GPU while the tests keep
#: handing NumPy arrays and CPU tensors in (the adapter moves them to the model's device and the
#: results back to the inputs' device, as for a user's GPU model).
TEST_DEVICE_VARIABLE = "XAI_TOOLBOX_TEST_DEVICE"


def torch_test_device() -> str:
    """The device of the PyTorch test models: ``$XAI_TOOLBOX_TEST_DEVICE``, else ``"cpu"``.

    Example:
        >>> import os
        >>> torch_test_device() == os.environ.get("XAI_TOOLBOX_TEST_DEVICE", "cpu")
        True
    """
    return os.environ.get(TEST_DEVICE_VARIABLE) or "cpu"


def torch_model(architecture: str, **options: Any) -> Any:
    """The PyTorch test models: ``"cnn"`` (conv1 → relu1 → pool1 → conv2 → relu2 → gap →
    flatten → fc) and ``"linear"`` (flatten → linear), on :func:`torch_test_device`.
    ``training=True`` hands the CNN over in training mode (the contract checks that a call
    restores it)."""
    return _torch_model(architecture, **options).to(torch_test_device())


def _torch_model(architecture: str, **options: Any) -> Any:
    import torch

    if architecture == "demo":  # the demo CNN with the given (trained) weights
        from .demo_models import build_torch_model

        weights = options["weights"]
        model = build_torch_model(weights["fc.weight"].shape[0])
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        return model.eval()
    if architecture == "cnn":
        weights, channels, width, classes = (options[k] for k in ("weights", "channels", "width", "classes"))
        t = torch.nn.Sequential()
        t.add_module("conv1", torch.nn.Conv2d(channels, width, 3, padding=1))
        t.add_module("relu1", torch.nn.ReLU())
        t.add_module("pool1", torch.nn.MaxPool2d(2))
        t.add_module("conv2", torch.nn.Conv2d(width, 2 * width, 3, padding=1))
        t.add_module("relu2", torch.nn.ReLU())
        t.add_module("gap", torch.nn.AdaptiveAvgPool2d(1))
        t.add_module("flatten", torch.nn.Flatten())
        t.add_module("fc", torch.nn.Linear(2 * width, classes))
        t.load_state_dict({k: torch.from_numpy(w) for k, w in weights.items()})
        return t.train() if options.get("training") else t.eval()
    if architecture == "linear":
        flat, bias = _linear_parts(options)
        layer = torch.nn.Linear(flat.shape[1], flat.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(flat))
            if bias is not None:
                layer.bias.copy_(torch.from_numpy(bias))
        return torch.nn.Sequential(torch.nn.Flatten(), layer).eval()
    raise _unknown(architecture)


def keras_model(architecture: str, **options: Any) -> Any:
    """The Keras twins of :func:`torch_model` (channels-last inputs, same functions)."""
    import keras

    if architecture == "demo":
        from .demo_models import build_keras_model, copy_state_dict_to_keras

        weights = options["weights"]
        model = build_keras_model(weights["fc.weight"].shape[0])
        copy_state_dict_to_keras(weights, model)
        return model
    if architecture == "cnn":
        weights, channels, width, classes, size = (
            options[k] for k in ("weights", "channels", "width", "classes", "size")
        )
        inputs = keras.Input((size, size, channels))
        h = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(inputs)
        h = keras.layers.ReLU(name="relu1")(h)
        h = keras.layers.MaxPooling2D(2, name="pool1")(h)
        h = keras.layers.Conv2D(2 * width, 3, padding="same", name="conv2")(h)
        h = keras.layers.ReLU(name="relu2")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
        outputs = keras.layers.Dense(classes, name="fc")(h)
        model = keras.Model(inputs, outputs, name="test_cnn")
        for name in ("conv1", "conv2", "fc"):
            model.get_layer(name).set_weights([keras_layout(weights[f"{name}.weight"]), weights[f"{name}.bias"]])
        return model
    if architecture == "linear":
        weight = np.asarray(options["weight"], dtype=np.float32)
        flat, bias = _linear_parts(options)
        shape = weight.shape[1:]
        keras_shape = (*shape[1:], shape[0]) if len(shape) >= 2 else shape
        permuted = np.moveaxis(weight, 1, -1) if len(shape) >= 2 else weight
        inputs = keras.Input(keras_shape)
        dense = keras.layers.Dense(flat.shape[0], use_bias=bias is not None, name="linear")
        model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
        values = [permuted.reshape(flat.shape[0], -1).T]
        if bias is not None:
            values.append(bias)
        dense.set_weights(values)
        return model
    raise _unknown(architecture)


def jax_model(architecture: str, **options: Any) -> Any:
    """The JAX twins of :func:`torch_model` (channels-last inputs, same functions).

    ``flavour`` picks the kind of JAX model: ``"nnx"`` (default: a Flax NNX module),
    ``"linen"`` (``functools.partial(module.apply, variables)`` of a Flax Linen module),
    ``"function"`` (``xt.JaxModel(fn, params)`` of a ``jax.numpy`` function: no layers) or
    ``"jit"`` (a ``jax.jit`` function with the weights closed over). ``"linear"`` is a
    ``jax.numpy`` function of its parameters in every flavour.
    """
    from . import jax_test_models

    if architecture == "cnn":
        return jax_test_models.cnn(options.get("flavour", "nnx"), options["weights"])
    if architecture == "linear":
        weight = np.asarray(options["weight"], dtype=np.float32)
        flat, bias = _linear_parts(options)
        permuted = np.moveaxis(weight, 1, -1) if weight.ndim >= 3 else weight
        return jax_test_models.linear(permuted.reshape(flat.shape[0], -1).T, bias)
    raise _unknown(architecture)


def _linear_parts(options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    weight = np.asarray(options["weight"], dtype=np.float32)
    bias = options.get("bias")
    return weight.reshape(weight.shape[0], -1), None if bias is None else np.asarray(bias, np.float32)


def torch_native(array: np.ndarray) -> Any:
    """A NumPy array as a CPU PyTorch tensor (a copy)."""
    import torch

    return torch.from_numpy(np.array(array, copy=True))


def keras_native(array: np.ndarray) -> Any:
    """A NumPy array as a TensorFlow tensor."""
    import tensorflow as tf

    return tf.convert_to_tensor(array)


def jax_native(array: np.ndarray) -> Any:
    """A NumPy array as a JAX array (on JAX's default device)."""
    import jax.numpy as jnp

    return jnp.asarray(array)
