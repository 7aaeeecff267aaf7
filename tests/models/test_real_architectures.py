"""Every method and metric on architectures that no one here wrote: ``transformers`` image
models in PyTorch (ViT, distilled DeiT, Swin, ConvNeXt, ResNet), ``keras.applications``
(ResNet50, EfficientNetB0) and a ``keras_hub`` ViT backbone, random weights, small inputs.

Checked for each: the maps' shape, finiteness and that they are not constant; the CAM layer
chosen by default (the last spatial block; for transformers the last block's input
normalisation, or the final one when patch tokens are pooled); the metrics' scores; and that
a method that cannot run on an architecture says so with a toolbox error.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.evaluation import top1

pytestmark = pytest.mark.models

N = 2
#: Cheap settings, applied to every method or metric that takes the parameter.
FAST: dict[str, Any] = {
    "nb_samples": 8, "nb_design": 8, "steps": 4, "max_iter": 3, "grid_size": 4, "patch_size": 8,
    "stride": 8, "seed": 0,
}
#: Per-method settings: on the 2 × 2 feature maps of 64 px CNNs no position exceeds FEM's
#: mean + 2σ threshold (at most √3 σ above the mean with 4 positions), so k = 1 here.
OVERRIDES: dict[str, dict[str, Any]] = {"fem": {"k": 1}}
#: Metrics that need trained models or are checked elsewhere.
SKIPPED_METRICS = {"mege"}
#: Per-channel CAMs: one pass per channel of the default layer (2048 for ResNet50); run on the
#: transformers' tiny configs only.
CHANNEL_PASS_CAMS = {"scorecam", "ablationcam"}


def fast(cls: type, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    names = cls.param_names()
    params = {k: v for k, v in FAST.items() if k in names}
    return {**params, **(extra or {})}


# -- the architectures ------------------------------------------------------------------------------------
def hf(kind: str) -> tuple[Any, int, str]:
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    vit = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 5}
    if kind == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**vit))
        return model.eval(), 32, r"vit\.(layers|encoder\.layer)\.1\.layernorm_before"  # transformers 5 / 4
    if kind == "deit":
        model = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**vit))
        return model.eval(), 32, r"deit\.(layers|encoder\.layer)\.1\.layernorm_before"
    if kind == "swin":
        config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                         window_size=2, num_labels=5)
        return transformers.SwinForImageClassification(config).eval(), 32, r"swin\.layernorm"
    if kind == "convnext":
        config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=5)
        return transformers.ConvNextForImageClassification(config).eval(), 64, r"convnext\.encoder\.stages\.3"
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=5)
    return transformers.ResNetForImageClassification(config).eval(), 64, r"resnet\.encoder\.stages\.3"


def keras_model(kind: str) -> tuple[Any, int, str]:
    import keras

    keras.utils.set_random_seed(0)
    if kind == "resnet50":
        return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=5), 64, "conv5_block3_out"
    if kind == "efficientnetb0":
        return keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=5), 64, "top_activation"
    keras_hub = pytest.importorskip("keras_hub")
    # seed 1: with seed 0's random head, Grad-CAM's weighted sum is negative everywhere (all 0)
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
                                            hidden_dim=32, mlp_dim=64, name="backbone")
    inputs = keras.Input((32, 32, 3))
    tokens = backbone(inputs)
    model = keras.Model(inputs, keras.layers.Dense(5, name="head")(tokens[:, 0]))
    return model, 32, "backbone/vit_encoder/transformer_block_2/ln_1"


ARCHITECTURES = [
    ("torch", "vit"), ("torch", "deit"), ("torch", "swin"), ("torch", "convnext"), ("torch", "resnet"),
    ("tf", "resnet50"), ("tf", "efficientnetb0"), ("tf", "keras_hub_vit"),
]


def build(framework: str, kind: str) -> tuple[Any, Any, str]:
    model, size, layer = hf(kind) if framework == "torch" else keras_model(kind)
    images = np.random.default_rng(0).random((N, 3, size, size), dtype=np.float32)
    x = images if framework == "torch" else np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return model, x, layer


def check_maps(maps: Any, x: np.ndarray, framework: str, where: str) -> np.ndarray:
    maps = np.asarray(maps)
    size = x.shape[2:] if framework == "torch" else x.shape[1:3]
    assert maps.shape == (N, *size), f"{where}: shape {maps.shape}"
    assert np.all(np.isfinite(maps)), f"{where}: non-finite values"
    assert np.ptp(maps) > 0, f"{where}: constant maps"
    return maps


# -- the matrix --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "kind"), ARCHITECTURES, ids=[k for _, k in ARCHITECTURES])
def test_every_method_and_metric(backend: str, kind: str, pytestconfig: pytest.Config) -> None:
    framework = backend
    if framework not in pytestconfig.frameworks:  # type: ignore[attr-defined]
        pytest.skip(f"{framework} not under test")
    model, x, expected_layer = build(framework, kind)
    adapter = xt.adapt(model)  # one adapter: Keras traces once for every method
    targets = top1(adapter, x).classes
    timings = {}
    maps_of: dict[str, np.ndarray] = {}
    refused = {}
    for name in xt.list_methods():
        cls = type(xt.method(name, None))
        if name in CHANNEL_PASS_CAMS and kind in ("resnet50", "efficientnetb0"):
            continue
        method = xt.method(name, adapter, batch_size=32, **fast(cls, OVERRIDES.get(name)))
        start = time.perf_counter()
        try:
            maps = method(x, targets)
        except xt.UnsupportedModelError as error:  # e.g. Guided Backprop on a GELU network
            refused[name] = str(error)
            continue
        timings[name] = time.perf_counter() - start
        maps_of[name] = check_maps(maps, x, framework, f"{name} on {kind}")
        if cls.family == "cam":
            assert re.fullmatch(expected_layer, method.layer_), f"{name} on {kind}: layer {method.layer_!r}"
    assert set(refused) <= {"guided_backprop", "deconvnet"}, refused
    saliency = maps_of["saliency"]
    masks = np.zeros_like(saliency)
    masks[:, : saliency.shape[1] // 2] = 1
    for name in xt.list_metrics():
        if name in SKIPPED_METRICS:
            continue
        metric = xt.metric(name, adapter, batch_size=32, **fast(type(xt.metric(name, None))))
        start = time.perf_counter()
        if metric.needs_explanations:
            result = metric(x, targets, saliency, masks if metric.needs_masks else None)
        else:
            result = metric.evaluate("saliency", x, targets)
        timings[f"metric {name}"] = time.perf_counter() - start
        assert result.scores.shape == (N,), name
        assert np.any(np.isfinite(result.scores)), f"{name} on {kind}: no finite score"
    slowest = sorted(timings.items(), key=lambda kv: -kv[1])[:3]
    print(f"{kind}: {sum(timings.values()):.1f} s; slowest {slowest}")


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_hugging_face_models_unwrapped_and_twin_reshapes(kind: str, pytestconfig: pytest.Config) -> None:
    if "torch" not in pytestconfig.frameworks:  # type: ignore[attr-defined]
        pytest.skip("torch not under test")
    model, x, layer = build("torch", kind)
    auto = xt.GradCAM(model)(x, [0, 1])
    chosen = xt.GradCAM(model)
    chosen(x[:1], [0])
    assert re.fullmatch(layer, chosen.layer_)
    explicit = xt.GradCAM(model, layer=chosen.layer_, reshape=(4, 4), output="logits")(x, [0, 1])
    np.testing.assert_allclose(auto, explicit, atol=1e-6)
