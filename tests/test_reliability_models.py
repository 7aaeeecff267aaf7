"""Models a careless user brings: NaN outputs, other dtypes, mixed precision, structured
outputs, several inputs, inference-mode and meta tensors — each works or fails with a clear
toolbox error that names the cause (docs/reliability.md)."""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from typing import Any

import numpy as np
import pytest
from _reliability import wrapped_cnn

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, cnn

RISE = {"nb_samples": 16, "grid_size": 4, "seed": 0}


def _images(framework: str, n: int = 2) -> np.ndarray:
    x = np.random.default_rng(0).random((n, 3, 16, 16), dtype=np.float32)
    return x if framework == "torch" else x.transpose(0, 2, 3, 1).copy()


# -- NaN from the model: the model is blamed, not the method ------------------------------------
def _nan_model(framework: str, where: str) -> Any:
    """A CNN whose class scores are NaN (``"outputs"``) or whose gradient is (``"gradients"``)."""
    if framework == "torch":
        import torch

        def forward(net: Any, x: Any) -> Any:
            if where == "outputs":
                return net(x) * float("nan")
            return net(x) + torch.sqrt(x.abs() * 0).sum(dim=(1, 2, 3))[:, None]  # d sqrt(0) = inf

        return wrapped_cnn(torch, forward)
    import keras
    import tensorflow as tf

    inputs = keras.Input((16, 16, 3))
    out = cnn("tf")(inputs)
    if where == "outputs":
        out = keras.layers.Lambda(lambda t: t * float("nan"))(out)
    else:
        out = keras.layers.Lambda(lambda t: t[0] + tf.reduce_sum(tf.sqrt(tf.abs(t[1]) * 0), axis=[1, 2, 3])[:, None])([out, inputs])
    return keras.Model(inputs, out)


@pytest.mark.parametrize(
    "method, params, where, kinds",
    [
        ("rise", RISE, "outputs", "outputs"),
        ("saliency", {}, "outputs", "outputs and gradients"),
        ("gradcam", {}, "outputs", "outputs and gradients"),
        ("occlusion", {"patch_size": 4, "stride": 4}, "outputs", "outputs"),
        ("saliency", {}, "gradients", "gradients"),
    ],
)
def test_a_model_returning_nan_is_blamed_not_the_method(
    framework: str, method: str, params: dict[str, Any], where: str, kinds: str
) -> None:
    model = _nan_model(framework, where)
    with pytest.raises(xt.NonFiniteOutputError) as info:
        xt.explain(model, _images(framework), [0, 1], method=method, **params)
    message = str(info.value)
    assert f"returned NaN or infinite values in its {kinds} on finite inputs" in message
    assert f"so {method!r} cannot explain it" in message
    assert isinstance(info.value, xt.ModelError) and not isinstance(info.value, xt.PluginError)


@pytest.mark.parametrize("metric, params", [
    ("mufidelity", {"nb_samples": 8, "grid_size": 4}), ("deletion", {"steps": 4}), ("insertion", {"steps": 4}),
])
def test_metrics_treat_nan_scores_alike(framework: str, metric: str, params: dict[str, Any]) -> None:
    """A model that returns NaN gives NaN scores in every fidelity metric (MuFidelity gave 0.0),
    left out of the mean, with one warning that says why."""
    model = _nan_model(framework, "outputs")
    maps = np.random.default_rng(1).random((2, 16, 16), dtype=np.float32)
    with pytest.warns(xt.errors.UndefinedScoreWarning, match="2 of 2 scores are undefined.*the model returned NaN"):
        result = xt.metric(metric, model, **params)(_images(framework), [0, 1], maps)
    assert np.isnan(result.scores).all() and np.isnan(result.mean) and result.n == 0


def test_degenerate_metric_inputs_get_a_defined_result(torch: Any) -> None:
    model = cnn("torch")
    x = _images("torch")
    maps = np.random.default_rng(1).random((2, 16, 16), dtype=np.float32)
    constant = maps.copy()
    constant[1] = 0.25
    with pytest.warns(xt.errors.UndefinedScoreWarning, match="1 of 2 .*constant explanation maps rank no position"):
        result = xt.metric("deletion", model, steps=4)(x, [0, 1], constant)
    assert np.isfinite(result.scores[0]) and np.isnan(result.scores[1]) and np.isnan(result.curves[1]).all()
    assert result.mean == result.scores[0]

    masks = np.zeros((2, 16, 16), np.float32)
    masks[:, 4:8, 4:8] = 1.0
    energy = xt.metric("energy_pointing_game", model)
    reference = energy(x, [0, 1], maps, masks=masks).scores
    huge = energy(x, [0, 1], maps * np.float32(3e38), masks=masks).scores  # sums overflowed to NaN
    np.testing.assert_allclose(huge, reference, rtol=1e-5)
    half = np.full((2, 16, 16), 0.5, np.float32)
    with pytest.warns(UserWarning) as caught:
        scores = energy(x, [0, 1], maps, masks=half).scores
    assert np.isnan(scores).all()  # an empty mask: undefined, as in the pointing game (was 0.0)
    text = " ".join(str(w.message) for w in caught)
    assert "strictly between 0 and 1 (e.g. 0.5)" in text and "empty masks" in text


# -- dtypes and precision --------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-6), ("float16", 0.05), ("bfloat16", 0.2)])
@pytest.mark.parametrize("method, params", [("saliency", {}), ("gradcam", {}), ("rise", RISE)])
def test_pytorch_models_run_in_their_own_dtype(
    torch: Any, dtype: str, tolerance: float, method: str, params: dict[str, Any]
) -> None:
    model = cnn("torch", seed=0)
    x = torch.from_numpy(_images("torch"))
    reference = as_numpy(xt.explain(model, x, [0, 1], method=method, **params))
    other = copy.deepcopy(model).to(getattr(torch, dtype))
    maps = xt.explain(other, x, [0, 1], method=method, **params)
    assert maps.dtype == torch.float32
    scale = np.abs(reference).max()
    assert np.abs(as_numpy(maps) - reference).max() <= tolerance * scale
    assert next(other.parameters()).dtype == getattr(torch, dtype)  # the model is left as it was


@pytest.mark.parametrize("method, params", [
    ("rise", RISE), ("occlusion", {"patch_size": 4, "stride": 4}), ("saliency", {}), ("gradcam", {}),
    ("integrated_gradients", {"steps": 4}),
])
def test_mixed_precision_keras_models(keras: Any, method: str, params: dict[str, Any]) -> None:
    """The mixed-precision setup docs/frameworks.md recommends: float16 outputs."""
    previous = keras.mixed_precision.global_policy()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((16, 16, 3))
        h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
        model = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    x = _images("tf")
    maps = as_numpy(xt.explain(model, x, [0, 1], method=method, **params))
    assert maps.shape == (2, 16, 16) and maps.dtype == np.float32 and np.isfinite(maps).all()
    varied = np.ptp(maps.reshape(2, -1), axis=1) > 0  # a constant map is Deletion's NaN, by design
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xt.errors.UndefinedScoreWarning)
        result = xt.metric("deletion", model, steps=4)(x, [0, 1], maps)
    assert varied.any() and (np.isfinite(result.scores) == varied).all()


def test_inference_mode_and_meta_tensors(torch: Any) -> None:
    model = cnn("torch")
    x = torch.from_numpy(_images("torch"))
    reference = as_numpy(xt.explain(model, x, [0, 1], method="saliency"))
    with torch.inference_mode():
        frozen = x.clone()
        inside = as_numpy(xt.explain(model, frozen, [0, 1], method="saliency"))  # the call too
    np.testing.assert_allclose(as_numpy(xt.explain(model, frozen, [0, 1], method="saliency")), reference)
    np.testing.assert_allclose(inside, reference)
    with pytest.raises(xt.InputError, match="meta device: they have a shape but no values"):
        xt.explain(model, x.to("meta"), [0, 1], method="saliency")
    with pytest.raises(xt.UnsupportedModelError, match="meta device.*to_empty"):
        xt.explain(copy.deepcopy(model).to("meta"), x, [0, 1], method="rise", **RISE)


# -- structure: outputs and inputs -----------------------------------------------------------
@dataclasses.dataclass
class _Heads:
    scores: Any
    boxes: Any


def _structured(torch: Any, kind: str) -> Any:
    def forward(net: Any, x: Any) -> Any:
        out = net(x)
        extra = out[:, :2] * 2
        return {"tuple": (out, extra), "dict": {"a": out, "b": extra}, "dataclass": _Heads(out, extra)}[kind]

    return wrapped_cnn(torch, forward)


@pytest.mark.parametrize("kind", ["tuple", "dict", "dataclass"])
def test_a_structured_output_says_how_to_pick_one(torch: Any, kind: str) -> None:
    """Even with a score_fn, an ambiguous output fails with an error that shows the structure
    and says ``output=`` (it was ``Unknown type``)."""
    x = torch.from_numpy(_images("torch"))
    for params in ({}, {"score_fn": lambda out, t: out[:, 0]}):
        with pytest.raises(xt.XaiToolboxError) as info:
            xt.explain(_structured(torch, kind), x, [0, 1], method="saliency", **params)
        message = str(info.value)
        assert "output=" in message and re.search(r"tensor \(\d, 4\).*tensor \(\d, 2\)", message), message


def test_a_keras_model_with_two_inputs_is_refused_in_one_line(keras: Any) -> None:
    image, extra = keras.Input((16, 16, 3)), keras.Input((4,))
    h = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(image), extra])
    model = keras.Model([image, extra], keras.layers.Dense(3)(h))
    with pytest.raises(xt.UnsupportedModelError) as info:
        xt.explain(model, _images("tf"), [0, 1], method="saliency")
    assert "takes 2 inputs" in str(info.value) and "\n" not in str(info.value)


# -- parameters, score functions, targets -----------------------------------------------------
def test_parameter_typos_score_fn_results_and_huge_targets(torch: Any) -> None:
    model = cnn("torch")
    with pytest.raises(xt.ParameterError, match=r"unknown parameter 'nb_sample' \(did you mean 'nb_samples'\?\)"):
        xt.method("rise", model, nb_sample=10)
    x = torch.from_numpy(_images("torch"))
    with pytest.raises(xt.ScoreFunctionError, match="score_fn returned a numpy.ndarray; it must return a tensor"):
        xt.explain(model, x, [0, 1], method="rise", score_fn=lambda out, t: out.detach().numpy()[:, 0], **RISE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy overflow warning on the way
        with pytest.raises(xt.TargetError, match=r"target index 1000000000000000000000000000000 is out of range"):
            xt.explain(model, x, 10**30, method="saliency")
        with pytest.raises(xt.TargetError, match="out of range"):
            xt.explain(model, x, [0, 10**30], method="saliency")
