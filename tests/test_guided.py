"""Guided Backprop and DeconvNet: the ReLU rules on a toy network, in both frameworks, the
model left as it was (also after errors), other gradients unaffected, twins, Captum parity."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.testing import as_numpy, check_method, cnn, to_framework, twin_cnn

RULES = {"guided_backprop": "guided", "deconvnet": "deconv"}


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def _toy(framework: str, kind: str = "module") -> Any:
    """``f(x) = vᵀ ReLU(W x)``, ``W = I``, ``v = (−3, 2)`` (the reference notes' A3 test); the
    ReLU as a module/layer, an activation of the first layer, or a functional call."""
    v = np.array([[-3.0, 2.0]], np.float32)
    if framework == "torch":
        import torch

        class Functional(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.first, self.last = torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 1, bias=False)

            def forward(self, x: Any) -> Any:
                h = self.first(x)
                return self.last(torch.nn.functional.relu(h) if kind == "functional" else h.relu_())

        if kind in ("functional", "method"):
            model = Functional()
            first, last = model.first, model.last
        else:
            model = torch.nn.Sequential(
                torch.nn.Linear(2, 2, bias=False), torch.nn.ReLU(inplace=kind == "inplace"), torch.nn.Linear(2, 1, bias=False)
            )
            first, last = model[0], model[2]
        with torch.no_grad():
            first.weight.copy_(torch.eye(2))
            last.weight.copy_(torch.from_numpy(v))
        return model.eval()
    import keras

    inputs = keras.Input((2,))
    if kind == "activation":
        first = keras.layers.Dense(2, use_bias=False, activation="relu")
        hidden = first(inputs)
    else:
        first = keras.layers.Dense(2, use_bias=False)
        hidden = keras.layers.ReLU()(first(inputs))
    last = keras.layers.Dense(1, use_bias=False)
    model = keras.Model(inputs, last(hidden))
    first.set_weights([np.eye(2, dtype=np.float32)])
    last.set_weights([v.T.copy()])
    return model


TOY_KINDS = {"torch": ["module", "inplace", "functional", "method"], "tf": ["layer", "activation"]}


def test_rules_on_the_toy_network(framework: str) -> None:
    x = np.array([[1.0, -1.0]], np.float32)
    for kind in TOY_KINDS[framework]:
        model = _toy(framework, kind)
        np.testing.assert_array_equal(as_numpy(xt.method("gradient_input", model)(x, [0])) / x, [[-3.0, 0.0]])
        np.testing.assert_array_equal(as_numpy(xt.GuidedBackprop(model)(x, [0])), [[0.0, 0.0]], err_msg=kind)
        np.testing.assert_array_equal(as_numpy(xt.DeconvNet(model)(x, [0])), [[0.0, 2.0]], err_msg=kind)
        # a score_fn takes the taped path instead of the compiled one: the same rules apply
        score = lambda outputs, targets: outputs[:, 0]  # noqa: E731
        np.testing.assert_array_equal(as_numpy(xt.DeconvNet(model, score_fn=score)(x)), [[0.0, 2.0]], err_msg=kind)


def _relu_mlp(framework: str, seed: int = 0) -> tuple[Any, np.ndarray, list[np.ndarray]]:
    """A 6 → 5 → ReLU → 4 → ReLU → 3 network with the same weights in both frameworks."""
    rng = np.random.default_rng(seed)
    w = [rng.normal(size=s).astype(np.float32) for s in ((5, 6), (4, 5), (3, 4))]
    if framework == "torch":
        import torch

        layers = [torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)]
        model = torch.nn.Sequential(*layers).eval()
        with torch.no_grad():
            for layer, weight in zip(layers[::2], w, strict=True):
                layer.weight.copy_(torch.from_numpy(weight))
                layer.bias.zero_()
        return model, rng.normal(size=(4, 6)).astype(np.float32), w
    import keras

    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(4, activation="relu"),
         keras.layers.Dense(3)]
    )
    for layer, weight in zip(model.layers, w, strict=True):
        layer.set_weights([weight.T.copy(), np.zeros(weight.shape[0], np.float32)])
    return model, rng.normal(size=(4, 6)).astype(np.float32), w


def _numpy_rule(w: list[np.ndarray], x: np.ndarray, target: int, rule: str) -> np.ndarray:
    """The rule written out by hand for the MLP of :func:`_relu_mlp`."""
    z1 = w[0] @ x
    z2 = w[1] @ np.maximum(z1, 0)
    r = w[2][target]
    for z, weight in ((z2, w[1]), (z1, w[0])):
        r = np.maximum(r, 0) * (z > 0) if rule == "guided" else np.maximum(r, 0)
        r = weight.T @ r
    return r


def test_rules_match_a_numpy_reference(framework: str) -> None:
    model, x, w = _relu_mlp(framework)
    targets = np.array([0, 1, 2, 1])
    for name, rule in RULES.items():
        ours = as_numpy(xt.method(name, model)(x, targets))
        expected = np.stack([_numpy_rule(w, x[i], targets[i], rule) for i in range(4)])
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", list(RULES))
def test_twins_agree(both: None, name: str) -> None:
    torch_model, keras_model = twin_cnn(seed=2)
    images, targets = _images(4, seed=1), np.array([0, 1, 2, 3])
    a = as_numpy(xt.method(name, torch_model, batch_size=3)(to_framework(images, "torch"), targets))
    b = as_numpy(xt.method(name, keras_model, batch_size=3)(to_framework(images, "tf"), targets))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert np.abs(a - as_numpy(xt.method("saliency", torch_model)(to_framework(images, "torch"), targets))).max() > 0


@pytest.mark.parametrize("name", list(RULES))
def test_contract(name: str, pytestconfig: pytest.Config) -> None:
    check_method(xt.api.get_registry().method(name).cls, frameworks=pytestconfig.frameworks)


def _layer_state(model: Any) -> list[tuple[str, Any]]:
    """What a rule could leave behind on a Keras model: every layer's own attributes."""
    from xai_toolbox.backends.tensorflow import _walk

    return [(name, {key: id(value) for key, value in vars(layer).items()}) for name, layer in _walk(model)]


def _weighted_gradient(adapter: Any, x: Any, targets: np.ndarray) -> np.ndarray:
    t = adapter.to_model(x)
    return as_numpy(adapter.weighted_value_and_grad(t, adapter.from_numpy(t, np.eye(4, dtype=np.float32)[targets]))[1])


def _plain_gradient(model: Any, x: Any, targets: np.ndarray) -> np.ndarray:
    return _weighted_gradient(xe.adapt(model), x, targets)


def test_the_model_and_other_gradients_are_left_as_they_were(framework: str) -> None:
    model = cnn(framework, seed=3)
    x, targets = to_framework(_images(), framework), np.array([0, 1, 2])
    plain = _plain_gradient(model, x, targets)  # the ordinary compiled pass is cached first
    state = _layer_state(model) if framework == "tf" else None
    before = xe.adapt(model).model_state()
    guided = as_numpy(xt.GuidedBackprop(model, reducer="sum")(x, targets))
    np.testing.assert_array_equal(_plain_gradient(model, x, targets), plain)
    assert np.abs(guided - plain.sum(axis=1 if framework == "torch" else -1)).max() > 1e-4

    def failing(outputs: Any, targets: Any) -> Any:
        raise RuntimeError("inside the rule")

    with pytest.raises(RuntimeError, match="inside the rule"):
        xt.DeconvNet(model, score_fn=failing)(x)
    np.testing.assert_array_equal(_plain_gradient(model, x, targets), plain)
    assert xe.adapt(model).model_state() == before
    if framework == "tf":
        assert _layer_state(model) == state
    # a fresh adapter finds the rule's own compiled passes: the rule is neither lost nor leaked
    again = as_numpy(xt.explain(model, x, targets, method="guided_backprop", reducer="sum"))
    np.testing.assert_array_equal(again, guided)
    np.testing.assert_array_equal(_plain_gradient(model, x, targets), plain)


def test_other_threads_keep_plain_gradients(framework: str) -> None:
    model = cnn(framework, seed=4)
    x, targets = to_framework(_images(), framework), np.array([0, 1, 2])
    plain = _plain_gradient(model, x, targets)
    adapter = xe.adapt(model)
    entered, done = threading.Event(), threading.Event()
    seen: list[np.ndarray] = []

    def other() -> None:
        entered.wait(30)
        seen.append(_plain_gradient(model, x, targets))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with adapter.relu_backward("guided"):
        entered.set()
        assert done.wait(30)
    thread.join()
    np.testing.assert_array_equal(seen[0], plain)


def _rule_gradient(model: Any, x: Any, targets: np.ndarray, rule: str) -> np.ndarray:
    adapter = xe.adapt(model)
    with adapter.relu_backward(rule):
        return _weighted_gradient(adapter, x, targets)


def test_overlapping_rules_in_two_threads(framework: str) -> None:
    # Thread A's guided block ends while thread B's deconv block is still running: B keeps its
    # rule, and the last block to end puts the layers back.
    model = cnn(framework, seed=5)
    x, targets = to_framework(_images(), framework), np.array([0, 1, 2])
    plain = _plain_gradient(model, x, targets)
    expected = {rule: _rule_gradient(model, x, targets, rule) for rule in ("guided", "deconv")}
    state = _layer_state(model) if framework == "tf" else None
    b_entered, a_left = threading.Event(), threading.Event()
    seen: dict[str, np.ndarray] = {}

    def thread_b() -> None:
        adapter = xe.adapt(model)
        with adapter.relu_backward("deconv"):
            b_entered.set()
            a_left.wait(30)
            seen["deconv"] = _weighted_gradient(adapter, x, targets)

    other = threading.Thread(target=thread_b)
    adapter = xe.adapt(model)
    with adapter.relu_backward("guided"):
        other.start()
        assert b_entered.wait(30)
        seen["guided"] = _weighted_gradient(adapter, x, targets)
    a_left.set()
    other.join(30)
    for rule in ("guided", "deconv"):
        np.testing.assert_array_equal(seen[rule], expected[rule], err_msg=rule)
    assert np.abs(expected["guided"] - expected["deconv"]).max() > 1e-6
    np.testing.assert_array_equal(_plain_gradient(model, x, targets), plain)
    if framework == "tf":
        assert _layer_state(model) == state


def test_models_without_a_reachable_relu_are_refused(framework: str) -> None:
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    if framework == "torch":
        import torch

        gelu = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU(), torch.nn.Linear(3, 2))
        relu6 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU6(), torch.nn.Linear(3, 2))
        scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)))
        refused = [gelu, relu6, scripted]
    else:
        import keras

        def build(activation: Any) -> Any:
            return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation=activation), keras.layers.Dense(2)])

        refused = [build("gelu"), build("relu6"), keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                                                      keras.layers.ReLU(max_value=6.0), keras.layers.Dense(2)])]
    for model in refused:
        for name in RULES:
            with pytest.raises(xt.UnsupportedModelError, match="no ReLU"):
                xt.method(name, model)(x, [0, 1])
    with pytest.raises(ValueError, match="guided"), xe.adapt(refused[0]).relu_backward("backwards"):
        pass


def test_models_without_gradients_are_refused() -> None:
    model = xt.NumpyModel(lambda a: a.reshape(len(a), -1)[:, :3], channel_axis=1)
    with pytest.raises(xt.UnsupportedModelError):
        xt.GuidedBackprop(model)(np.zeros((1, 3, 4, 4), np.float32), [0])
    adapter = xe.adapt(model)
    with pytest.raises(xt.UnsupportedModelError), adapter.relu_backward("guided"):
        pass


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(xt.ParameterError, match="reducer"):
        xt.GuidedBackprop(None, reducer="median")
    assert xt.DeconvNet(None).passes_per_image() == 1


def test_parity_with_captum(torch: Any) -> None:
    captum = pytest.importorskip("captum.attr")
    cases = [(cnn("torch", seed=5), torch.from_numpy(_images(3, seed=6)), [0, 2, 3])]
    mlp, rows, _ = _relu_mlp("torch", seed=7)
    cases.append((mlp, torch.from_numpy(rows), [0, 1, 2, 0]))
    for model, x, targets in cases:
        for name, peer in (("guided_backprop", captum.GuidedBackprop), ("deconvnet", captum.Deconvolution)):
            ours = as_numpy(xt.method(name, model)(x, targets))
            theirs = peer(model).attribute(x.clone(), target=targets).detach().numpy()
            theirs = theirs.mean(axis=1) if theirs.ndim == 4 else theirs
            assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max(), name
