"""Model randomisation: an independent reference, untouched user weights, twins, layer choice."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

import xai_toolbox as xt
from xai_toolbox.metrics.randomization import ModelRandomization
from xai_toolbox.testing import as_numpy, check_metric, cnn, to_framework, twin_cnn


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def _weights(model: Any, framework: str) -> list[bytes]:
    if framework == "torch":
        return [t.detach().cpu().numpy().tobytes() for t in model.state_dict().values()]
    return [np.asarray(w).tobytes() for w in model.get_weights()]


def reference_randomized_cnn(framework: str, seed: int, weight_seed: int) -> Any:
    """The test CNN with fc then conv2 redrawn as documented: uniform ±1/sqrt(fan_in), PyTorch
    layout, parameters in order (weight, bias), layers from the output down."""
    rng = np.random.default_rng(weight_seed)
    drawn = {}
    for name, shape in (("fc", (4, 16)), ("conv2", (16, 8, 3, 3))):
        bound = 1 / np.sqrt(np.prod(shape[1:]))
        drawn[name] = (rng.uniform(-bound, bound, shape).astype(np.float32),
                       rng.uniform(-bound, bound, shape[:1]).astype(np.float32))
    model = cnn(framework, seed)
    for name, (w, b) in drawn.items():
        if framework == "torch":
            import torch

            module = getattr(model, name)
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(w))
                module.bias.copy_(torch.from_numpy(b))
        else:
            kernel = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
            model.get_layer(name).set_weights([kernel, b])
    return model


def test_matches_independent_reference(framework: str) -> None:
    model = cnn(framework, seed=1)
    images, targets = _images(), np.array([0, 2, 3])
    x = to_framework(images, framework)
    result = ModelRandomization(model, fraction=0.5, seed=7)(x, targets)
    assert result.details["layers"] == ["fc", "conv2"]

    before = as_numpy(xt.Saliency(model)(x, targets))
    after = as_numpy(xt.Saliency(reference_randomized_cnn(framework, 1, 7))(x, targets))
    np.testing.assert_allclose(result.details["after"], after, rtol=1e-5, atol=1e-7)
    expected = [stats.spearmanr(np.abs(a).ravel(), np.abs(b).ravel())[0] for a, b in zip(before, after, strict=True)]
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    signed = ModelRandomization(model, fraction=0.5, seed=7, absolute=False)(x, targets)
    expected = [stats.spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(before, after, strict=True)]
    np.testing.assert_allclose(signed.scores, expected, atol=1e-6)


def test_user_model_is_untouched(framework: str) -> None:
    model = cnn(framework, seed=2)
    before = _weights(model, framework)
    x = to_framework(_images(2), framework)
    for method in ("saliency", "gradcam"):
        result = ModelRandomization(model, method=method, fraction=1.0)(x, [1, 2])
        assert result.details["layers"] == ["fc", "conv2", "conv1"]
    assert _weights(model, framework) == before
    if framework == "torch":
        assert all(p.grad is None for p in model.parameters())


def test_layer_selection(framework: str) -> None:
    model = cnn(framework, seed=0)
    assert xt.adapt(model).weight_layers() == ["conv1", "conv2", "fc"]
    assert ModelRandomization(model).selected_layers() == ["fc"]  # ceil(0.25 × 3)
    assert ModelRandomization(model, fraction=0.34).selected_layers() == ["fc", "conv2"]
    assert ModelRandomization(model, layers=["conv1", "fc"]).selected_layers() == ["fc", "conv1"]
    with pytest.raises(xt.LayerError, match="conv1"):  # the message lists the candidates
        ModelRandomization(model, layers=["pool1"])(to_framework(_images(1), framework), [0])


def test_given_explanations_are_the_before_maps(framework: str) -> None:
    model = cnn(framework, seed=3)
    x, targets = to_framework(_images(), framework), np.array([1, 1, 0])
    maps = xt.GradCAM(model)(x, targets)
    metric = ModelRandomization(model, method="gradcam", fraction=0.5)
    np.testing.assert_allclose(metric(x, targets, maps).scores, metric(x, targets).scores, atol=1e-6)
    # evaluate(method) checks that method, whatever the configured one
    via_evaluate = ModelRandomization(model, fraction=0.5).evaluate("gradcam", x, targets)
    np.testing.assert_allclose(via_evaluate.scores, metric(x, targets).scores, atol=1e-6)
    instance = ModelRandomization(model, method=xt.GradCAM(model, layer="conv1"), fraction=0.5)
    assert not np.allclose(instance(x, targets).scores, metric(x, targets).scores)


def test_twin_models_agree(both: None) -> None:
    torch_model, keras_model = twin_cnn(seed=4)
    images, targets = _images(3, seed=2), np.array([0, 1, 2])
    for method in ("saliency", "gradient_input"):
        params = {"method": method, "fraction": 0.5, "seed": 3}
        a = ModelRandomization(torch_model, **params)(to_framework(images, "torch"), targets)
        b = ModelRandomization(keras_model, **params)(to_framework(images, "tf"), targets)
        np.testing.assert_allclose(a.details["after"], b.details["after"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_contract(pytestconfig: pytest.Config) -> None:
    check_metric(ModelRandomization, frameworks=pytestconfig.frameworks)


def test_bad_configuration() -> None:
    with pytest.raises(xt.UnknownNameError):
        ModelRandomization(None, method="no_such_method")
    with pytest.raises(xt.ParameterError):
        ModelRandomization(None, method=42)
    with pytest.raises(xt.ParameterError):
        ModelRandomization(None, fraction=0.0)
    with pytest.raises(xt.LayerError):
        ModelRandomization(None, layers="fc")
    numpy_model = xt.NumpyModel(lambda a: a.reshape(len(a), -1)[:, :3], channel_axis=1)
    with pytest.raises(xt.UnsupportedModelError, match="weights"):
        ModelRandomization(numpy_model)(_images(1), [0])


def test_keras_nested_model(keras: Any) -> None:
    inner = keras.Sequential(
        [keras.layers.Conv2D(4, 3, padding="same", name="c1"), keras.layers.BatchNormalization(name="bn"),
         keras.layers.ReLU()], name="backbone",
    )
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    assert xt.adapt(model).weight_layers() == ["backbone/c1", "backbone/bn", "head"]
    before = _weights(model, "tf")
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    result = ModelRandomization(model, layers=["bn", "head"])(x, [0, 1])  # inner names work when unique
    assert result.details["layers"] == ["head", "backbone/bn"]
    assert np.all(np.isfinite(result.scores))
    assert _weights(model, "tf") == before
