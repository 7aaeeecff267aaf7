"""The plugin contract as a reusable check, and the tiny twin models it runs on.

Plugin authors call :func:`check_method` / :func:`check_metric` on their classes in their own
test suites; the built-ins pass the same checks.

Example:
    >>> from xai_toolbox.testing import check_method
    >>> check_method(MyMethod, params={"nb_samples": 16})     # raises AssertionError on failure
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

FRAMEWORKS = ("torch", "tf")


def installed_frameworks() -> list[str]:
    """The frameworks importable here, among ``"torch"`` and ``"tf"``."""
    found = []
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    if importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("keras") is not None:
        found.append("tf")
    return found


# -- twin models ---------------------------------------------------------------------------
def copy_torch_to_keras(torch_model: Any, keras_model: Any, names: Sequence[str]) -> None:
    """Copy the weights of torch modules to the Keras layers of the same names.

    Conv kernels ``(out, in, kh, kw)`` become ``(kh, kw, in, out)``; linear weights are
    transposed. Both models then compute the same function (channels-first vs -last).
    """
    modules = dict(torch_model.named_modules())
    for name in names:
        module = modules[name]
        values = [keras_layout(module.weight.detach().cpu().numpy())]
        if getattr(module, "bias", None) is not None:
            values.append(module.bias.detach().cpu().numpy())
        keras_model.get_layer(name).set_weights(values)


def cnn_weights(seed: int = 0, *, channels: int = 3, classes: int = 4, width: int = 8) -> dict[str, np.ndarray]:
    """Random weights (PyTorch layout) of the test CNN, from NumPy so no framework is needed."""
    rng = np.random.default_rng(seed)

    def uniform(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    return {
        "conv1.weight": uniform((width, channels, 3, 3), channels * 9),
        "conv1.bias": uniform((width,), channels * 9),
        "conv2.weight": uniform((2 * width, width, 3, 3), width * 9),
        "conv2.bias": uniform((2 * width,), width * 9),
        "fc.weight": uniform((classes, 2 * width), 2 * width),
        "fc.bias": uniform((classes,), 2 * width),
    }


def cnn(
    framework: str, seed: int = 0, *, channels: int = 3, size: int = 16, classes: int = 4, width: int = 8
) -> Any:
    """A small CNN ``conv1 → relu1 → pool1 → conv2 → relu2 → gap → fc`` in ``framework``.

    The same ``seed`` gives the same weights in PyTorch and Keras (kernels transposed), so
    the two models compute the same function on ``(N, C, H, W)`` / ``(N, H, W, C)`` inputs.
    """
    weights = cnn_weights(seed, channels=channels, classes=classes, width=width)
    if framework == "torch":
        import torch

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
        return t.eval()
    import keras

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
        model.get_layer(name).set_weights(
            [keras_layout(weights[f"{name}.weight"]), weights[f"{name}.bias"]]
        )
    return model


def keras_layout(weight: np.ndarray) -> np.ndarray:
    """A PyTorch weight in Keras' layout: conv ``(out, in, *k)`` → ``(*k, in, out)``, dense ``.T``."""
    if weight.ndim == 4:
        return weight.transpose(2, 3, 1, 0)
    if weight.ndim == 3:
        return weight.transpose(2, 1, 0)
    return weight.T


def twin_cnn(seed: int = 0, **kwargs: Any) -> tuple[Any, Any]:
    """``(torch_model, keras_model)``: :func:`cnn` in both frameworks with the same weights."""
    return cnn("torch", seed, **kwargs), cnn("tf", seed, **kwargs)


def linear_model(framework: str, weight: np.ndarray, bias: np.ndarray | None = None) -> Any:
    """``f(x) = W · flatten(x) (+ b)`` in ``framework``; ``weight`` is ``(K, *input_shape)`` with
    the input shape channels-first (as PyTorch sees it), e.g. ``(K, C, H, W)`` or ``(K, F)``.

    For Keras the weight is permuted to channels-last, so both models compute the same scores
    for the same images in their own layouts.
    """
    weight = np.asarray(weight, dtype=np.float32)
    k, shape = weight.shape[0], weight.shape[1:]
    flat = weight.reshape(k, -1)
    if framework == "torch":
        import torch

        layer = torch.nn.Linear(flat.shape[1], k, bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(flat))
            if bias is not None:
                layer.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
        return torch.nn.Sequential(torch.nn.Flatten(), layer).eval()
    import keras

    keras_shape = (*shape[1:], shape[0]) if len(shape) >= 2 else shape
    permuted = np.moveaxis(weight, 1, -1) if len(shape) >= 2 else weight
    inputs = keras.Input(keras_shape)
    dense = keras.layers.Dense(k, use_bias=bias is not None, name="linear")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    values = [permuted.reshape(k, -1).T]
    if bias is not None:
        values.append(np.asarray(bias, np.float32))
    dense.set_weights(values)
    return model


def to_framework(images_nchw: np.ndarray, framework: str) -> Any:
    """NumPy images ``(N, C, H, W)`` as the framework's native batch (layout included)."""
    images_nchw = np.ascontiguousarray(images_nchw, dtype=np.float32)
    if framework == "torch":
        import torch

        return torch.from_numpy(images_nchw.copy())
    import tensorflow as tf

    return tf.convert_to_tensor(images_nchw.transpose(0, 2, 3, 1))


def as_numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def normalized(maps: np.ndarray) -> np.ndarray:
    """Per-item min-max normalisation, for comparing maps up to scale and offset."""
    maps = np.asarray(maps, dtype=np.float64)
    axes = tuple(range(1, maps.ndim))
    lo, hi = maps.min(axis=axes, keepdims=True), maps.max(axis=axes, keepdims=True)
    return (maps - lo) / np.where(hi - lo > 0, hi - lo, 1.0)


# -- the contract ----------------------------------------------------------------------------
def _models(frameworks: Sequence[str] | None, seed: int) -> dict[str, Any]:
    chosen = list(frameworks) if frameworks else installed_frameworks()
    missing = [f for f in chosen if f not in installed_frameworks()]
    if missing:
        raise AssertionError(f"frameworks not installed: {missing}")
    return {f: cnn(f, seed) for f in chosen}


def check_method(
    cls: type,
    params: dict[str, Any] | None = None,
    *,
    frameworks: Sequence[str] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
) -> None:
    """Run the method contract on ``cls`` and raise ``AssertionError`` naming what failed.

    Checks, in each framework: output shape ``(N, H, W)``, float32, the inputs' type (native
    in → native out, NumPy in → NumPy out), finite values; no ``.grad`` left on PyTorch
    parameters and the training flag restored; the same map for ``batch_size=1`` and a larger
    batch; the same map twice (seeded methods: same ``seed``). Across frameworks (when both
    are installed): the same map for twin models with identical weights, after per-image
    min-max normalisation, within ``atol``.
    """
    params = dict(params or {})
    rng = np.random.default_rng(seed)
    images = rng.random((3, 3, 16, 16), dtype=np.float32)
    targets = np.array([0, 1, 3])
    name = getattr(cls, "name", cls.__name__)
    maps: dict[str, np.ndarray] = {}
    for framework, model in _models(frameworks, seed).items():
        where = f"{name} on {framework}"
        x = to_framework(images, framework)
        if framework == "torch":
            model.train()  # the method must switch to eval and back
        before = _weights(model, framework)
        out = cls(model, **params)(x, targets)
        assert type(out) is type(x) or (framework == "tf" and hasattr(out, "numpy")), (
            f"{where}: returned {type(out).__name__} for a {type(x).__name__} input"
        )
        result = as_numpy(out)
        assert result.shape == (3, 16, 16), f"{where}: shape {result.shape}, expected (3, 16, 16)"
        assert result.dtype == np.float32, f"{where}: dtype {result.dtype}, expected float32"
        assert np.all(np.isfinite(result)), f"{where}: non-finite values"
        if framework == "torch":
            assert model.training, f"{where}: the model's training flag was not restored"
            grads = [n for n, p in model.named_parameters() if p.grad is not None]
            assert not grads, f"{where}: left .grad on parameters {grads}"
            model.eval()
        assert _same_weights(before, _weights(model, framework)), f"{where}: changed the model's weights"
        from_numpy = as_numpy(cls(model, **params)(_numpy_layout(images, framework), targets))
        assert isinstance(cls(model, **params)(_numpy_layout(images, framework)[:1], targets[:1]), np.ndarray), (
            f"{where}: NumPy inputs must give NumPy explanations"
        )
        np.testing.assert_allclose(from_numpy, result, atol=atol, rtol=1e-4, err_msg=f"{where}: not repeatable")
        one = as_numpy(cls(model, **{**params, "batch_size": 1})(x, targets))
        np.testing.assert_allclose(
            normalized(one), normalized(result), atol=atol, err_msg=f"{where}: depends on batch_size"
        )
        maps[framework] = result
    if len(maps) == 2:
        np.testing.assert_allclose(
            normalized(maps["torch"]), normalized(maps["tf"]), atol=atol,
            err_msg=f"{name}: PyTorch and TensorFlow twins disagree",
        )


def _numpy_layout(images_nchw: np.ndarray, framework: str) -> np.ndarray:
    return images_nchw if framework == "torch" else images_nchw.transpose(0, 2, 3, 1).copy()


def _weights(model: Any, framework: str) -> list[np.ndarray]:
    if framework == "torch":
        return [p.detach().cpu().numpy().copy() for p in model.state_dict().values()]
    return [np.array(w) for w in model.get_weights()]


def _same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def check_metric(
    cls: type,
    params: dict[str, Any] | None = None,
    *,
    frameworks: Sequence[str] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
    masks: bool = False,
) -> None:
    """Run the metric contract on ``cls`` and raise ``AssertionError`` naming what failed.

    Checks: a :class:`~xai_toolbox.MetricResult` with ``(N,)`` finite scores; repeatable;
    independent of ``batch_size``; weights and ``.grad`` untouched; and the same scores for
    twin PyTorch/Keras models (within ``atol``) when both frameworks are installed.
    """
    from .base import MetricResult

    params = dict(params or {})
    rng = np.random.default_rng(seed)
    images = rng.random((3, 3, 16, 16), dtype=np.float32)
    explanations = rng.random((3, 16, 16), dtype=np.float32)
    gt = np.zeros((3, 16, 16), dtype=np.float32)
    gt[:, 4:10, 5:12] = 1
    targets = np.array([0, 1, 3])
    name = getattr(cls, "name", cls.__name__)
    scores: dict[str, np.ndarray] = {}
    for framework, model in _models(frameworks, seed).items():
        where = f"{name} on {framework}"
        x = to_framework(images, framework)
        before = _weights(model, framework)
        kwargs = {"masks": gt} if masks else {}
        result = cls(model, **params)(x, targets, explanations, **kwargs)
        assert isinstance(result, MetricResult), f"{where}: returned {type(result).__name__}"
        assert result.scores.shape == (3,), f"{where}: scores shape {result.scores.shape}, expected (3,)"
        assert np.all(np.isfinite(result.scores)), f"{where}: non-finite scores"
        again = cls(model, **{**params, "batch_size": 1})(x, targets, explanations, **kwargs)
        np.testing.assert_allclose(again.scores, result.scores, atol=atol, err_msg=f"{where}: depends on batch_size")
        assert _same_weights(before, _weights(model, framework)), f"{where}: changed the model's weights"
        if framework == "torch":
            grads = [n for n, p in model.named_parameters() if p.grad is not None]
            assert not grads, f"{where}: left .grad on parameters {grads}"
        scores[framework] = result.scores
    if len(scores) == 2:
        np.testing.assert_allclose(
            scores["torch"], scores["tf"], atol=atol, err_msg=f"{name}: PyTorch and TensorFlow twins disagree"
        )


def copy_model(model: Any) -> Any:
    """A deep copy of a PyTorch or Keras model (weights included)."""
    if hasattr(model, "state_dict"):
        return copy.deepcopy(model)
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone
