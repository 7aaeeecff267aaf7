"""Framework adapters: model kinds, type/device round trips, compiled forward, NumPy callables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, cnn, to_framework


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)


def test_adapter_is_chosen_by_model_type(framework: str) -> None:
    adapter = xt.adapt(cnn(framework))
    assert adapter.framework == framework
    assert adapter.channel_axis == (1 if framework == "torch" else -1)
    assert xt.adapt(adapter) is adapter
    assert xt.adapt(lambda x: x, framework="numpy").framework == "numpy"


def test_numpy_in_numpy_out_native_in_native_out(framework: str) -> None:
    model = cnn(framework)
    x = _images()
    native = to_framework(x, framework)
    as_np = as_numpy(native)
    out_native = xt.Saliency(model)(native, [0, 1, 2])
    out_np = xt.Saliency(model)(as_np, [0, 1, 2])
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert xt.adapt(model).is_native(out_native) and not isinstance(out_native, np.ndarray)
    # Float rounding only: PyTorch's CPU kernels may differ in the last bits between two calls
    # when JAX's XLA runtime shares the process (tox -e jax).
    np.testing.assert_allclose(as_numpy(out_native), out_np, rtol=1e-5, atol=1e-8)


def test_other_framework_tensor_comes_back_in_its_own_type(both: None) -> None:
    import tensorflow as tf
    import torch

    x = _images()
    keras_model = cnn("tf")
    out = xt.Saliency(keras_model)(torch.from_numpy(x.transpose(0, 2, 3, 1).copy()), [0, 1, 2])
    assert isinstance(out, torch.Tensor)
    out = xt.Saliency(cnn("torch"))(tf.convert_to_tensor(x), [0, 1, 2])
    assert tf.is_tensor(out)


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed", "nested"])
def test_keras_model_kinds(keras, kind: str) -> None:
    keras.utils.set_random_seed(0)
    conv = lambda name: keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=name)  # noqa: E731
    if kind == "sequential":
        model = keras.Sequential([keras.Input((16, 16, 3)), conv("c"), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(3)])
    elif kind == "functional":
        inputs = keras.Input((16, 16, 3))
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(conv("c")(inputs))))
    elif kind == "subclassed":
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.c, self.pool, self.head = conv("c"), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)

            def call(self, x):
                return self.head(self.pool(self.c(x)))

        model = Net()
        model(np.zeros((1, 16, 16, 3), np.float32))
    else:
        inner = keras.Sequential([keras.Input((16, 16, 3)), conv("c")], name="inner")
        inputs = keras.Input((16, 16, 3))
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inner(inputs))))
    x = _images().transpose(0, 2, 3, 1).copy()
    for name in ("saliency", "gradcam", "integrated_gradients"):
        maps = np.asarray(xt.method(name, model, **({"steps": 4} if name == "integrated_gradients" else {}))(x, [0, 1, 2]))
        assert maps.shape == (3, 16, 16) and np.isfinite(maps).all()
    assert xt.adapt(model).default_layer(xt.adapt(model).to_model(x)) == "c"


def test_keras_chunks_do_not_retrace(keras) -> None:
    model = cnn("tf")
    adapter = xt.adapt(model)
    x = _images(7).transpose(0, 2, 3, 1).copy()
    xt.SmoothGrad(adapter, nb_samples=5, batch_size=4)(x, [0] * 7)   # 35 inputs: chunks of 4 and 3
    xt.Saliency(adapter, batch_size=3)(x, [0] * 7)
    assert adapter.traces == 1


def test_weighted_score_gradient_matches_the_generic_path(framework: str) -> None:
    # The entry point Keras compiles (tape inside one tf.function) against a tape around the
    # compiled forward, and against PyTorch's generic path: the same values and gradients.
    adapter = xt.adapt(cnn(framework))
    x = adapter.to_model(to_framework(_images(5), framework))
    weights = adapter.from_numpy(x, np.random.default_rng(0).random((5, 4), dtype=np.float32))
    values, grads = adapter.weighted_value_and_grad(x, weights)
    ref_values, ref_grads = adapter.value_and_grad(
        lambda z: (adapter.differentiable_forward(z) * weights).sum(axis=1), x
    )
    np.testing.assert_allclose(values.numpy(), ref_values.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads.numpy(), ref_grads.numpy(), rtol=1e-4, atol=1e-6)
    if framework == "tf":
        traces = adapter.traces
        adapter.weighted_value_and_grad(x[:2], weights[:2])  # another batch size: no retrace
        assert adapter.traces == traces
        assert "gradient" in {key[-1] for key in adapter._compiled}
    if framework == "torch":
        import torch

        identity: Any = torch.nn.Identity()
    else:
        import keras

        identity = keras.Sequential([keras.Input((2, 4)), keras.layers.Identity()])
    unscorable = xt.adapt(identity)  # (N, 2, 4) outputs: no class axis to weight
    z = unscorable.to_model(np.ones((1, 2, 4), np.float32))
    with pytest.raises(xt.ScoreFunctionError, match="default score needs"):
        unscorable.weighted_value_and_grad(z, unscorable.from_numpy(z, np.ones((1, 4), np.float32)))


def test_weighted_layer_activations_match_the_generic_path(framework: str) -> None:
    # The CAMs' entry point (compiled on Keras: the layer is wrapped while tracing) against
    # the eager path any score_fn takes: same activations, gradients and outputs.
    adapter = xt.adapt(cnn(framework))
    x = adapter.to_model(to_framework(_images(5), framework))
    weights = adapter.from_numpy(x, np.random.default_rng(1).random((5, 4), dtype=np.float32))
    layer = adapter.default_layer(x)
    got = adapter.weighted_layer_activations(x, layer, weights)
    expected = adapter.layer_activations(x, layer, lambda outputs: (outputs * weights).sum(axis=1))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    acts, grads, _ = adapter.layer_activations(x, layer)  # forward only: compiled too on Keras
    np.testing.assert_allclose(acts.numpy(), got[0].numpy(), rtol=1e-5, atol=1e-6)
    assert grads is None
    if framework == "tf":
        traces = adapter.traces
        adapter.weighted_layer_activations(x[:2], layer, weights[:2])  # another batch size
        adapter.layer_activations(x[:3], layer)
        assert adapter.traces == traces
        assert {f"layer {layer}", f"layer {layer} gradient"} <= {key[-1] for key in adapter._compiled}


def test_torch_model_on_its_device_and_results_on_the_inputs(torch) -> None:
    model = cnn("torch")
    adapter = xt.adapt(model)
    assert adapter.device == torch.device("cpu")
    x = torch.from_numpy(_images())
    out = xt.GradCAM(model)(x, [0, 1, 2])
    assert out.device == x.device and out.dtype == torch.float32


def test_torch_model_without_parameters(torch) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    out = xt.Saliency(model)(np.ones((2, 3), np.float32), [1, 2])
    np.testing.assert_allclose(out, [[0, 1, 0], [0, 0, 1]])


def test_numpy_callable_model_for_black_box_use() -> None:
    w = np.random.default_rng(0).normal(size=(12, 2)).astype(np.float32)
    model = xt.NumpyModel(lambda x: x.reshape(len(x), -1) @ w, channel_axis=1)
    adapter = xt.adapt(model)
    assert adapter.channel_axis == 1 and not adapter.supports_gradients
    x = np.ones((3, 3, 2, 2), np.float32)
    out = adapter.forward(adapter.to_model(x)).numpy()
    np.testing.assert_allclose(out, x.reshape(3, -1) @ w, rtol=1e-6)
    with pytest.raises(xt.UnsupportedModelError, match="one row of scores per input"):
        xt.adapt(lambda x: np.ones(5)).forward(adapter.to_model(x))
    with pytest.raises(ValueError, match="channel_axis"):
        xt.NumpyModel(lambda x: x, channel_axis=2)
    with pytest.raises(xt.UnsupportedModelError, match="needs gradients"):
        xt.GradCAM(model)(x, [0, 0, 0])
    with pytest.raises(xt.UnsupportedModelError, match="no inner layers"):
        adapter.layer_activations(adapter.to_model(x), "any")


def test_top1_targets_with_a_numpy_callable() -> None:
    model = lambda x: np.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], axis=1)  # noqa: E731
    adapter = xt.adapt(model)
    from xai_toolbox._targets import resolve_targets

    x = adapter.to_model(np.stack([np.ones((2, 2, 3)), -np.ones((2, 2, 3))]).astype(np.float32))
    targets = resolve_targets(adapter, x, None, None, batch_size=1)
    np.testing.assert_array_equal(targets.labels, [0, 1])


def _odd_layers_model(framework: str) -> Any:
    """Inputs (N, 4): ``head`` makes the outputs; ``side`` runs but the outputs ignore it;
    ``pair`` returns a tuple; ``unused`` never runs."""
    if framework == "torch":
        import torch

        class Pair(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return x, x

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.head, self.side = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
                self.pair, self.unused = Pair(), torch.nn.Linear(4, 3)

            def forward(self, x: Any) -> Any:
                self.side(x)
                first, _ = self.pair(x)
                return self.head(first)

        return Net()
    import keras

    class Pair(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x, x

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.head, self.side = keras.layers.Dense(3, name="head"), keras.layers.Dense(3, name="side")
            self.pair, self.unused = Pair(name="pair"), keras.layers.Dense(3, name="unused")

        def call(self, x: Any) -> Any:
            self.side(x)
            first, _ = self.pair(x)
            return self.head(first)

    model = Net()
    model.unused.build((None, 4))  # built, as a layer the model never calls would not be
    model(np.zeros((1, 4), np.float32))
    return model


def test_layer_errors_name_the_layer(framework: str) -> None:
    if framework == "jax":
        pytest.skip("a Keras or PyTorch model: the JAX adapter's layer errors are in tests/test_jax.py")
    adapter = xt.adapt(_odd_layers_model(framework))
    x = adapter.to_model(np.ones((2, 4), np.float32))
    weights = adapter.from_numpy(x, np.eye(3, dtype=np.float32)[[0, 1]])
    with pytest.raises(xt.LayerError, match="'unused' was not called"):
        adapter.weighted_layer_activations(x, "unused", weights)
    with pytest.raises(xt.LayerError, match="'pair' returns tuple, not a tensor"):
        adapter.layer_activations(x, "pair")
    if framework != "keras-jax":  # JAX differentiates to zeros where the others find no path
        with pytest.raises(xt.LayerError, match="score does not depend on layer 'side'"):
            adapter.weighted_layer_activations(x, "side", weights)
    acts, grads, outputs = adapter.weighted_layer_activations(x, "head", weights)
    assert acts.shape == (2, 3) and grads is not None and outputs.shape == (2, 3)
    np.testing.assert_allclose(grads.numpy(), weights.numpy())  # d(Σ out·w)/d(out) = w


def test_forward_with_activations_runs_the_head_on_given_feature_maps(framework: str) -> None:
    """Own activations give the forward pass back; zeros after the last ReLU leave the bias;
    a wrong shape is refused naming both shapes."""
    model = cnn(framework)
    adapter = xt.adapt(model)
    x = adapter.to_model(to_framework(np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32), framework))
    acts, _, outputs = adapter.layer_activations(x, "relu2")
    np.testing.assert_allclose(adapter.forward_with_activations(x, "relu2", acts).numpy(), outputs.numpy(), atol=1e-6)
    bias = xt.testing.cnn_weights()["fc.bias"]
    np.testing.assert_allclose(adapter.forward_with_activations(x, "relu2", acts * 0.0).numpy(), np.tile(bias, (3, 1)), atol=1e-6)
    wrong = acts[:, :2] if adapter.channel_axis == 1 else acts[..., :2]
    with pytest.raises(xt.LayerError, match=r"cannot replace the output of layer 'relu2'"):
        adapter.forward_with_activations(x, "relu2", wrong)
