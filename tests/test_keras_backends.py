"""Keras 3 on its JAX and PyTorch backends: the adapter of the model's backend, native passes
(compiled on JAX, torch autograd on PyTorch), layers, nested models, and clear refusals.

Keras's backend is chosen once per process (``KERAS_BACKEND``): these tests run in tox's ``jax``
(``--framework keras-jax``) and ``keras-torch`` (``--framework keras-torch``) envs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, cnn, to_framework

BACKENDS = {"keras-jax": "jax", "keras-torch": "torch"}


@pytest.fixture
def keras_framework(pytestconfig: pytest.Config) -> str:
    """The Keras-on-another-backend framework under test (else the test is skipped)."""
    chosen = [f for f in pytestconfig.frameworks if f in BACKENDS]  # type: ignore[attr-defined]
    if not chosen:
        pytest.skip("Keras on JAX or PyTorch not under test (--framework keras-jax / keras-torch)")
    return chosen[0]


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)


def test_the_adapter_of_the_models_backend(keras_framework: str) -> None:
    import keras

    assert keras.backend.backend() == BACKENDS[keras_framework]
    model = cnn(keras_framework)
    adapter = xt.adapt(model)
    assert adapter.framework == keras_framework and adapter.channel_axis == -1
    assert xt.adapt(model, framework="keras").framework == keras_framework  # "keras": any backend
    x = adapter.to_model(to_framework(_images(), keras_framework))
    np.testing.assert_allclose(as_numpy(adapter.forward(x)), as_numpy(model(x.raw, training=False)), atol=1e-6)


def test_keras_on_torch_is_a_module_but_gets_the_keras_adapter(keras_framework: str) -> None:
    if keras_framework != "keras-torch":
        pytest.skip("PyTorch backend only")
    import torch

    model = cnn("keras-torch")
    assert isinstance(model, torch.nn.Module)
    assert xt.adapt(model).framework == "keras-torch"  # NHWC Keras layers, not torch's NCHW modules
    with pytest.raises(xt.UnsupportedModelError, match="keras-torch"):
        xt.adapt(model, framework="torch")


def test_a_backend_without_native_support_is_refused_by_name(keras_framework: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from xai_toolbox.backends import builtin

    model = cnn(keras_framework)
    monkeypatch.setattr(builtin, "configured_keras_backend", lambda: "numpy")
    with pytest.raises(xt.UnsupportedModelError, match="'numpy' backend.*TensorFlow, JAX and PyTorch"):
        xt.adapt(model)


def test_gradients_on_the_backends_own_machinery(keras_framework: str, pytestconfig: pytest.Config) -> None:
    """Saliency and Grad-CAM equal the PyTorch twin's; on JAX the gradient pass is a jit
    function traced once per input shape and layer (the second call traces nothing)."""
    import keras

    images, targets = _images(), np.array([0, 1, 3])
    traces: list[Any] = []

    class Counted(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            traces.append(tuple(x.shape))  # Python runs on every eager call, once per jax trace
            return x

    base = cnn(keras_framework)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, base(Counted(name="counted")(inputs)))
    x = to_framework(images, keras_framework)
    for name, params in (("saliency", {}), ("gradcam", {"layer": "relu2"})):
        first = as_numpy(xt.method(name, model, **params)(x, targets))
        calls = len(traces)
        again = as_numpy(xt.method(name, model, **params)(x, targets))
        np.testing.assert_array_equal(first, again)
        if keras_framework == "keras-jax":
            assert len(traces) == calls, f"{name}: traced again"
        if "torch" in pytestconfig.frameworks:  # type: ignore[attr-defined]
            expected = as_numpy(xt.method(name, cnn("torch"))(to_framework(images, "torch"), targets))
            np.testing.assert_allclose(first, expected, atol=1e-4, err_msg=name)


def test_nested_layers_by_short_or_qualified_name(keras_framework: str) -> None:
    import keras

    inner = cnn(keras_framework)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, inner(inputs), name="outer")
    adapter = xt.adapt(model)
    assert adapter.resolve_layer("conv2") == f"{inner.name}/conv2"
    x = adapter.to_model(to_framework(_images(), keras_framework))
    assert adapter.resolve_layer(adapter.default_layer(x)) == f"{inner.name}/relu2"
    acts, grads, _ = adapter.layer_activations(x, "conv2", lambda out: out[:, 0])
    assert tuple(acts.shape) == tuple(grads.shape) == (3, 8, 8, 16)
    with pytest.raises(xt.LayerError, match="conv2"):
        adapter.resolve_layer("conv3")


def test_model_randomisation_and_state(keras_framework: str) -> None:
    model = cnn(keras_framework)
    adapter = xt.adapt(model)
    before = adapter.model_state()
    result = xt.metric("randomization", model, method="saliency")(to_framework(_images(), keras_framework), [0, 1, 2])
    assert np.all(np.isfinite(result.scores))
    assert adapter.model_state() == before  # the copies were randomised, not the model
