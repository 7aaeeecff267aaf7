"""The user's model is untouched by every method and metric, also when the call raises.

PyTorch: the training flag of every module, ``requires_grad`` flags, weights and buffers
(byte-identical, BatchNorm running statistics included) and existing ``.grad`` tensors
(identity and values). Keras: weights (byte-identical) and ``trainable`` flags.
Every registered method and metric is run (with small parameters), so a new plugin is
checked as soon as it is installed.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from _shared import FAST_METHOD_PARAMS as METHOD_PARAMS
from _shared import FAST_METRIC_PARAMS as METRIC_PARAMS

import xai_toolbox as xt
from xai_toolbox.testing import to_framework

N = 2
TARGETS = np.array([0, 2])
NEEDS_MODEL_LIST = {"mege"}  # metrics that compare several trained models


def _images() -> np.ndarray:
    return np.random.default_rng(0).random((N, 3, 16, 16), dtype=np.float32)


def _masks() -> np.ndarray:
    masks = np.zeros((N, 16, 16), dtype=np.float32)
    masks[:, 4:10, 3:12] = 1
    return masks


def _maps() -> np.ndarray:
    return np.random.default_rng(1).random((N, 16, 16), dtype=np.float32)


def _methods() -> list[str]:
    return xt.list_methods()


def _metrics() -> list[str]:
    return xt.list_metrics()


# -- PyTorch -----------------------------------------------------------------------------------
def torch_net() -> Any:
    """A CNN with BatchNorm and Dropout (train mode changes results and buffers), a frozen
    first conv, and a ``.grad`` already on the last layer (a user mid-way through training)."""
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(8)
            self.relu1 = torch.nn.ReLU()
            self.pool1 = torch.nn.MaxPool2d(2)
            self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.relu2 = torch.nn.ReLU()
            self.drop = torch.nn.Dropout(0.5)
            self.gap = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(16, 4)
            self.forwards = 0
            self.fail_at: int | None = None

        def forward(self, x: Any) -> Any:
            self.forwards += 1
            if self.fail_at is not None and self.forwards >= self.fail_at:
                raise RuntimeError("the model fails mid-way (test)")
            h = self.pool1(self.relu1(self.bn1(self.conv1(x))))
            h = self.gap(self.drop(self.relu2(self.conv2(h))))
            return self.fc(h.flatten(1))

    net = Net()
    with torch.no_grad():  # non-trivial running statistics
        net.bn1.running_mean.uniform_(-0.1, 0.1)
        net.bn1.running_var.uniform_(0.5, 1.5)
    net.conv1.weight.requires_grad_(False)
    net.fc.weight.grad = torch.full_like(net.fc.weight, 0.25)
    net.train()
    return net


def torch_state(net: Any) -> dict[str, Any]:
    return {
        "training": {name: m.training for name, m in net.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in net.named_parameters()},
        "state": {k: v.detach().cpu().numpy().tobytes() for k, v in net.state_dict().items()},
        "grad_ids": {name: id(p.grad) if p.grad is not None else None for name, p in net.named_parameters()},
        "grads": {
            name: None if p.grad is None else p.grad.detach().cpu().numpy().tobytes()
            for name, p in net.named_parameters()
        },
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any], where: str) -> None:
    for key in before:
        assert before[key] == after[key], f"{where}: {key} changed"


def _call(kind: str, name: str, model: Any, framework: str, **extra: Any) -> Any:
    x = to_framework(_images(), framework)
    if kind == "method":
        return xt.method(name, model, **METHOD_PARAMS.get(name, {}), **extra)(x, TARGETS)
    if name in NEEDS_MODEL_LIST:  # the user's own model stands for the k trained models
        extra.setdefault("models", [model, model])
    metric = xt.metric(name, model, **METRIC_PARAMS.get(name, {}), **extra)
    masks = _masks() if metric.needs_masks else None
    return metric(x, TARGETS, _maps(), masks)


def _cases() -> list[tuple[str, str]]:
    return [("method", m) for m in _methods()] + [("metric", m) for m in _metrics()]


@pytest.mark.parametrize(("kind", "name"), _cases(), ids=[f"{k}-{n}" for k, n in _cases()])
def test_torch_model_untouched(torch, kind: str, name: str) -> None:
    net = torch_net()
    before = torch_state(net)
    first = _call(kind, name, net, "torch")
    _assert_same(before, torch_state(net), f"{name}")
    # Dropout would make a second call differ if the call ran in training mode.
    second = _call(kind, name, net, "torch")
    if kind == "method":
        np.testing.assert_array_equal(first.numpy(), second.numpy(), err_msg=f"{name}: not in eval mode")
    else:
        np.testing.assert_array_equal(first.scores, second.scores, err_msg=f"{name}: not in eval mode")


@pytest.mark.parametrize(("kind", "name"), _cases(), ids=[f"{k}-{n}" for k, n in _cases()])
def test_torch_model_untouched_when_the_model_raises_mid_way(torch, kind: str, name: str) -> None:
    net = torch_net()
    net.forwards = 0
    _call(kind, name, net, "torch")
    calls = net.forwards
    before = torch_state(net)
    net.forwards, net.fail_at = 0, max(2, calls // 2) if calls >= 2 else 1
    with pytest.raises(xt.ModelError, match="fails mid-way"):
        _call(kind, name, net, "torch")
    net.fail_at = None
    _assert_same(before, torch_state(net), f"{name} (model raised)")


class ScoreFnFailure(Exception):
    """Raised by the test's score_fn."""


class _CountingScore:
    """``score_fn`` picking logit 0, raising :class:`ScoreFnFailure` at call ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, outputs: Any, targets: Any) -> Any:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise ScoreFnFailure("score_fn fails mid-way (test)")
        return outputs[:, 0]


@pytest.mark.parametrize(("kind", "name"), _cases(), ids=[f"{k}-{n}" for k, n in _cases()])
def test_torch_model_untouched_when_score_fn_raises(torch, kind: str, name: str) -> None:
    net = torch_net()
    counting = _CountingScore()
    try:
        _call(kind, name, net, "torch", score_fn=counting)
    except xt.ParameterError as error:
        if "score_fn" not in str(error):
            raise
        pytest.skip(f"{name} takes no score_fn: {error}")
    if counting.calls == 0:
        pytest.skip(f"{name} does not score the model's outputs")
    before = torch_state(net)
    # After at least one forward pass: half-way through the calls (the only one if just one).
    with pytest.raises(ScoreFnFailure) as info:
        _call(kind, name, net, "torch", score_fn=_CountingScore(fail_at=(counting.calls + 1) // 2))
    # The user's own exception keeps its type; a note names the plugin that was running (for
    # a metric that explains first, possibly the method it runs).
    notes = getattr(info.value, "__notes__", [])
    assert any("xai-toolbox: raised while running" in note for note in notes), notes
    _assert_same(before, torch_state(net), f"{name} (score_fn raised)")


def test_parameters_of_a_misbehaving_plugin_are_restored(torch) -> None:
    """A plugin that calls backward() and flips requires_grad: the engine undoes both."""

    class Careless(xt.AttributionMethod):
        name = "careless"

        def explain_batch(self, x: ep.Tensor, targets: Any) -> ep.Tensor:
            model = self.adapter.model
            model.fc.weight.requires_grad_(False)
            model.conv1.weight.requires_grad_(True)
            model(x.raw).sum().backward()  # accumulates into every .grad in place
            raise RuntimeError("and then fails")

    net = torch_net()
    before = torch_state(net)
    with pytest.raises(RuntimeError, match="and then fails"):
        Careless(net)(to_framework(_images(), "torch"), TARGETS)
    _assert_same(before, torch_state(net), "careless plugin")
    assert net.conv2.weight.grad is None


def test_eval_mode_is_shared_by_nested_calls(torch) -> None:
    """A metric that explains inside its call (evaluate) restores train mode once, at the end."""
    if "deletion" not in xt.list_metrics():
        pytest.skip("deletion not registered")
    net = torch_net()
    metric = xt.metric("deletion", net, steps=4)
    result = metric.evaluate("saliency", to_framework(_images(), "torch"), TARGETS)
    assert result.scores.shape == (N,)
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("mode", ["eval", "mixed"])
def test_training_flags_restored_module_by_module(torch, mode: str) -> None:
    """An eval model stays as it is; a mix of modes (e.g. frozen batch norm) comes back exactly."""
    net = torch_net()
    net.eval()
    if mode == "mixed":
        net.drop.train()  # a user fine-tuning with dropout on but batch norm frozen
    before = {name: m.training for name, m in net.named_modules()}
    first = xt.method("saliency", net)(to_framework(_images(), "torch"), TARGETS)
    second = xt.method("saliency", net)(to_framework(_images(), "torch"), TARGETS)
    assert {name: m.training for name, m in net.named_modules()} == before
    np.testing.assert_array_equal(first.numpy(), second.numpy())  # dropout was off during the calls


# -- Keras -------------------------------------------------------------------------------------
def keras_net() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(h)
    h = keras.layers.ReLU(name="relu2")(h)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(4, name="fc")(h)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn1")
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.uniform(-0.1, 0.1, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 1.5, 8).astype(np.float32))
    model.get_layer("conv1").trainable = False
    return model


def keras_state(model: Any) -> dict[str, Any]:
    layers = [layer for layer in model._flatten_layers(include_self=True)]
    return {
        "weights": [np.asarray(w).tobytes() for w in model.get_weights()],
        "trainable": {layer.name: layer.trainable for layer in layers},
        "n_trainable": len(model.trainable_weights),
    }


@pytest.mark.parametrize(("kind", "name"), _cases(), ids=[f"{k}-{n}" for k, n in _cases()])
def test_keras_model_untouched(tf, kind: str, name: str) -> None:
    model = keras_net()
    before = keras_state(model)
    _call(kind, name, model, "tf")
    _assert_same(before, keras_state(model), name)


def test_keras_model_untouched_when_score_fn_raises(tf) -> None:
    model = keras_net()
    before = keras_state(model)

    def score_fn(outputs: Any, targets: Any) -> Any:
        raise ScoreFnFailure("score_fn fails (test)")

    for name in ("saliency", "gradcam", "integrated_gradients"):
        with pytest.raises(ScoreFnFailure):
            _call("method", name, model, "tf", score_fn=score_fn)
    _assert_same(before, keras_state(model), "score_fn raised")
