"""The JAX adapter: which models it takes (NNX, Linen, functions, jit), its contract on each,
jit traces kept and shared, layers and their names, eval mode, OOM retries, ReLU rules.

Runs when jax is under test (``--framework jax``, tox -e jax); PyTorch twins where torch is.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.backends.test_models import jax_model
from xai_toolbox.registry import Entry, get_registry
from xai_toolbox.testing import as_numpy, check_adapter, cnn, cnn_weights, to_framework

pytestmark = pytest.mark.usefixtures("jax")


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)


def _flavour(flavour: str) -> Any:
    return jax_model("cnn", weights=cnn_weights(0), flavour=flavour)


@pytest.fixture
def test_models_of(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the "jax" framework's test models of one flavour (for the contract checks)."""

    def use(flavour: str) -> None:
        tables = get_registry().tables["framework"]
        entry = tables["jax"]
        builder = functools.partial(jax_model, flavour=flavour)
        monkeypatch.setitem(tables, "jax", Entry("jax", dataclasses.replace(entry.obj, build_test_model=builder), entry.plugin, entry.package))

    return use


@pytest.mark.parametrize("flavour", ["nnx", "linen", "function", "jit"])
def test_models_are_recognised(flavour: str) -> None:
    from xai_toolbox.backends.jax import JaxAdapter

    adapter = xt.adapt(_flavour(flavour))
    assert isinstance(adapter, JaxAdapter) and adapter.framework == "jax" and adapter.channel_axis == -1
    assert adapter.supports_layers == (flavour in ("nnx", "linen"))


def test_more_ways_to_give_a_linen_model() -> None:
    import jax.numpy as jnp

    model = _flavour("linen")
    module, variables = model.func.__self__, model.args[0]
    x = jnp.asarray(to_framework(_images(), "jax"))
    expected = as_numpy(module.apply(variables, x))
    for given in (module.bind(variables), xt.JaxModel(module, variables)):
        adapter = xt.adapt(given)
        assert adapter.framework == "jax" and "conv2" in adapter.layer_names()
        np.testing.assert_allclose(as_numpy(adapter.forward(adapter.to_model(x))), expected, atol=1e-6)


def test_a_plain_function_is_a_numpy_callable_unless_declared_jax() -> None:
    import jax.numpy as jnp

    def fn(x: Any) -> Any:
        return jnp.sum(x, axis=(1, 2))

    assert xt.adapt(fn).framework == "numpy"
    assert xt.adapt(fn, framework="jax").framework == "jax"
    assert xt.adapt(xt.JaxModel(fn)).framework == "jax"
    maps = xt.explain(xt.JaxModel(fn), np.ones((1, 4, 4, 3), np.float32), 0, method="saliency")
    np.testing.assert_allclose(maps, 1.0)  # the gradient of a sum over channel 0: ones


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
def test_adapter_contract(flavour: str, test_models_of: Any) -> None:
    test_models_of(flavour)
    check_adapter("jax")


@pytest.mark.parametrize("flavour", ["function", "jit"])
def test_functions_match_their_twins(flavour: str, test_models_of: Any, pytestconfig: pytest.Config) -> None:
    """Gradient, Guided Backprop and black-box maps of functions (no layers) equal the NNX twin's."""
    images, targets = _images(), np.array([0, 1, 3])
    for name, params in (("saliency", {}), ("guided_backprop", {}), ("occlusion", {"patch_size": 5, "stride": 4})):
        expected = as_numpy(xt.method(name, cnn("jax"), **params)(to_framework(images, "jax"), targets))
        test_models_of(flavour)
        got = as_numpy(xt.method(name, cnn("jax"), **params)(to_framework(images, "jax"), targets))
        test_models_of("nnx")
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    with pytest.raises(xt.UnsupportedModelError, match="no named inner layers"):
        xt.method("gradcam", _flavour(flavour))(to_framework(images, "jax"), targets)


def test_user_jit_is_kept_and_passes_are_traced_once() -> None:
    """A jax.jit model is called as given; the forward and gradient passes are traced once per
    input shape and shared by new method objects and adapters of models of one structure."""
    import jax

    from xai_toolbox.backends.jax_test_models import _params, cnn_function

    traces = []

    def counted(params: Any, x: Any) -> Any:
        traces.append(x.shape)  # Python runs only while JAX traces
        return cnn_function(params, x)

    model = xt.JaxModel(jax.jit(counted), _params(cnn_weights(0)))
    x = to_framework(_images(), "jax")
    xt.method("saliency", model)(x, [0, 1, 2])
    first = len(traces)
    assert first == len(set(traces)) <= 2  # the batch's shape (and one input, to learn the outputs)
    for _ in range(3):
        xt.method("saliency", model)(x, [0, 1, 2])
        xt.method("saliency", xt.JaxModel(model.fn, _params(cnn_weights(1))))(x, [0, 1, 2])
    assert len(traces) == first


def test_layer_names_and_errors() -> None:
    from flax import nnx

    nnx_adapter, linen_adapter = xt.adapt(_flavour("nnx")), xt.adapt(_flavour("linen"))
    assert set(nnx_adapter.layer_names()) == {"conv1", "relu1", "pool1", "conv2", "relu2", "gap", "fc"}
    nnx_adapter.to_model(to_framework(_images(1), "jax"))  # then in the order the model calls them
    assert nnx_adapter.layer_names() == ["conv1", "relu1", "pool1", "conv2", "relu2", "gap", "fc"]
    linen_adapter.to_model(to_framework(_images(1), "jax"))  # Linen layers are found by tracing
    assert set(linen_adapter.layer_names()) == {"conv1", "relu1", "pool1", "conv2", "relu2", "gap", "fc"}
    with pytest.raises(xt.LayerError, match="conv2"):
        nnx_adapter.resolve_layer("conv3")

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return nnx.relu(self.conv(x))

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.blocks = nnx.List([Block(rngs), Block(rngs)]) if hasattr(nnx, "List") else [Block(rngs), Block(rngs)]
            self.head = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            x = self.blocks[1](self.blocks[0](x)[..., :3])
            return self.head(x.mean(axis=(1, 2)))

    adapter = xt.adapt(Net(nnx.Rngs(0)))
    assert "blocks/0/conv" in adapter.layer_names() and "blocks/1/conv" in adapter.layer_names()
    with pytest.raises(xt.LayerError, match="ambiguous"):
        adapter.resolve_layer("conv")
    x = adapter.to_model(np.ones((2, 8, 8, 3), np.float32))
    assert adapter.default_layer(x) == "blocks/1/conv"
    acts, grads, _ = adapter.layer_activations(x, "blocks/0/conv", lambda out: out[:, 0])
    assert acts.shape == (2, 8, 8, 4) and grads.shape == (2, 8, 8, 4)


def test_nnx_models_run_in_eval_mode_and_are_left_as_they_were() -> None:
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.norm = nnx.BatchNorm(4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.head = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.head(self.drop(self.norm(self.conv(x))).mean(axis=(1, 2)))

    model = Net(nnx.Rngs(0))
    model.train()  # dropout on, batch statistics updated: a call must not use nor change them
    before = xt.adapt(model).model_state()
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    a, b = (xt.method("saliency", model)(x, [0, 1]) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert model.drop.deterministic is False and model.norm.use_running_average is False
    assert xt.adapt(model).model_state() == before


def test_out_of_memory_is_retried_on_halves() -> None:
    import jax
    import jax.numpy as jnp

    from xai_toolbox.backends.jax import JaxAdapter

    class XlaRuntimeError(RuntimeError):  # what jaxlib raises, by name and message
        pass

    adapter = JaxAdapter(xt.JaxModel(lambda x: x.sum(axis=(1, 2))))
    assert adapter.is_out_of_memory(XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes"))
    assert not adapter.is_out_of_memory(XlaRuntimeError("INVALID_ARGUMENT: shapes"))
    assert adapter.is_out_of_memory(MemoryError())

    def small_batches_only(x: Any) -> Any:
        if x.shape[0] > 2:  # shapes are static: raised while tracing
            raise XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return jnp.sum(x, axis=(1, 2))

    model = xt.JaxModel(jax.jit(small_batches_only))
    images = np.random.default_rng(0).random((5, 4, 4, 3), dtype=np.float32)
    with pytest.warns(xt.errors.OutOfMemoryWarning):
        maps = xt.method("occlusion", model, patch_size=2, stride=2, batch_size=8)(images, [0, 1, 2, 0, 1])
    assert maps.shape == (5, 4, 4)


def test_relu_rules_reach_relus_inside_jit_and_refuse_models_without_any() -> None:
    import jax
    import jax.numpy as jnp

    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    inner = jax.jit(lambda h: jax.nn.relu(h @ w))
    adapter = xt.adapt(xt.JaxModel(lambda z: inner(z) @ w))
    t = adapter.to_model(x)
    weights = adapter.from_numpy(t, np.eye(4, dtype=np.float32)[[0, 1]])
    plain = as_numpy(adapter.weighted_value_and_grad(t, weights)[1])
    with adapter.relu_backward("guided"):
        guided = as_numpy(adapter.weighted_value_and_grad(t, weights)[1])
    # by hand: R = w[:, k] at the ReLU's output; guided passes relu(R) where z > 0
    z = x @ w
    expected = np.stack([(np.maximum(w[:, k], 0) * (z[i] > 0)) @ w.T for i, k in enumerate([0, 1])])
    np.testing.assert_allclose(guided, expected, atol=1e-5)
    np.testing.assert_allclose(as_numpy(adapter.weighted_value_and_grad(t, weights)[1]), plain)  # no leak
    linear = xt.adapt(xt.JaxModel(lambda z: jnp.maximum(z @ w, 0.0)))  # a ReLU written out
    with pytest.raises(xt.UnsupportedModelError, match="no ReLU"), linear.relu_backward("deconv"):
        linear.weighted_value_and_grad(linear.to_model(x), weights)


def test_inputs_and_results_in_the_callers_types(pytestconfig: pytest.Config) -> None:
    import jax

    model = cnn("jax")
    images = _images()
    from_numpy = xt.method("gradcam", model)(to_framework(images, "jax").__array__(), [0, 1, 2])
    from_jax = xt.method("gradcam", model)(to_framework(images, "jax"), [0, 1, 2])
    assert isinstance(from_numpy, np.ndarray) and isinstance(from_jax, jax.Array)
    np.testing.assert_allclose(as_numpy(from_jax), from_numpy, atol=1e-6)
    if "torch" in pytestconfig.frameworks:  # type: ignore[attr-defined]
        import torch

        given = torch.from_numpy(np.moveaxis(images, 1, -1).copy())
        out = xt.method("gradcam", model)(given, [0, 1, 2])
        assert isinstance(out, torch.Tensor)
        np.testing.assert_allclose(out.numpy(), from_numpy, atol=1e-6)


def test_seeded_draws_on_the_device() -> None:
    adapter = xt.adapt(cnn("jax"))
    like = adapter.to_model(np.zeros((1, 2), np.float32))
    a, b = (as_numpy(adapter.random_normal(like, (1000,), 3)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, as_numpy(adapter.random_normal(like, (1000,), 4)))
    assert adapter.mutable_tensors is False
