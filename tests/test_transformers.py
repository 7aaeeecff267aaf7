"""CAMs on transformers: token layers ``(N, tokens, C)`` laid on their patch grid, the default
layer of a ViT (the last block's input normalisation, or the final one when patch tokens are
pooled), ``reshape=``, and the layer used reported after the call — on a small ViT built in
both frameworks with identical weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _vit_models import keras_vit, torch_vit, twin_vit, vit_weights

import xai_toolbox as xt
from xai_toolbox.extend import token_grid, token_layers
from xai_toolbox.testing import normalized, to_framework

IMAGES = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
LABELS = np.array([0, 2, 4])


def build(framework: str, pool: str = "cls", **kwargs: Any) -> Any:
    weights = vit_weights(0, **kwargs)
    return torch_vit(weights, pool=pool) if framework == "torch" else keras_vit(weights, pool=pool)


def last_norm1(framework: str) -> str:
    return "blocks.1.norm1" if framework == "torch" else "block1_norm1"


# -- the grid of patch tokens ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tokens", "size", "expected"),
    [
        (197, (224, 224), (1, 14, 14)),   # ViT-B/16: class token
        (198, (224, 224), (2, 14, 14)),   # distilled DeiT: class + distillation tokens
        (201, (224, 224), (5, 14, 14)),   # class + 4 register tokens
        (49, (224, 224), (0, 7, 7)),      # Swin's last stage, no class token
        (33, (64, 32), (1, 8, 4)),        # a non-square image
        (3, (32, 32), None),              # a 1 × 1 grid is no map
        (230, (224, 224), None),          # no grid of square patches tiles the image
    ],
)
def test_token_grid(tokens: int, size: tuple[int, int], expected: Any) -> None:
    assert token_grid(tokens, size) == expected


def test_token_layers_come_after_the_last_spatial_layer_and_prefer_norms() -> None:
    records = [("patch", (1, 8, 4, 4)), ("b0.norm1", (1, 17, 8)), ("b0.q", (1, 17, 8)), ("b1.norm1", (1, 17, 8)),
               ("pool", (1, 8)), ("head", (1, 5))]
    assert token_layers(records, (16, 16), {"b0.norm1", "b1.norm1"}) == [("b0.norm1", 1), ("b1.norm1", 1)]
    assert token_layers(records, (16, 16)) == [("b0.norm1", 1), ("b0.q", 1), ("b1.norm1", 1)]
    cnn = [("conv1", (1, 8, 16, 16)), ("mix", (1, 17, 8)), ("conv2", (1, 8, 8, 8)), ("fc", (1, 5))]
    assert token_layers(cnn, (16, 16)) == []  # token-shaped tensors before the last conv do not count


# -- token order: row-major after the class token -------------------------------------------------
def patch_model(framework: str) -> Any:
    """Patch embedding averaging each 4 × 4 patch, a class token of zeros, and a head summing
    every token: Grad-CAM at the tokens is the patch means on the 4 × 4 grid."""
    weight = np.full((2, 3, 4, 4), 1 / 48, np.float32)
    if framework == "torch":
        import torch

        class Model(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.patch = torch.nn.Conv2d(3, 2, 4, stride=4, bias=False)
                self.patch.weight.data = torch.from_numpy(weight)
                self.tokens = torch.nn.Identity()

            def forward(self, x: Any) -> Any:
                t = self.patch(x).flatten(2).transpose(1, 2)
                t = self.tokens(torch.cat([torch.zeros_like(t[:, :1]), t], dim=1))
                return t.sum(dim=1)

        return Model().eval()
    import keras

    from xai_toolbox.testing import keras_layout

    inputs = keras.Input((16, 16, 3))
    t = keras.layers.Conv2D(2, 4, strides=4, use_bias=False, name="patch")(inputs)
    t = keras.layers.Reshape((16, 2))(t)
    t = keras.layers.ZeroPadding1D((1, 0), name="tokens")(t)  # a zero class token in front
    model = keras.Model(inputs, keras.ops.sum(t, axis=1))
    model.get_layer("patch").set_weights([keras_layout(weight)])
    return model


def test_patch_tokens_are_laid_row_major(framework: str) -> None:
    image = np.zeros((1, 3, 16, 16), np.float32)
    image[:, :, 4:8, 8:12] = 1.0  # patch (row 1, column 2)
    maps = xt.GradCAM(patch_model(framework), layer="tokens")(to_framework(image, framework), [0])
    maps = np.asarray(maps)
    assert maps.shape == (1, 16, 16)
    # the coarse map is one-hot at cell (1, 2); bilinear upsampling puts the peak in that patch
    row, col = np.unravel_index(np.argmax(maps[0]), (16, 16))
    assert 4 <= row < 8 and 8 <= col < 12
    assert maps[0, :2].max() == 0 and maps[0, :, :4].max() == 0


# -- the default layer and the layer reported ------------------------------------------------------
@pytest.mark.parametrize(("pool", "expected"), [("cls", "norm1"), ("mean", "norm")])
def test_default_layer_of_a_vit(framework: str, pool: str, expected: str) -> None:
    model = build(framework, pool)
    method = xt.GradCAM(model)
    assert method.layer_ is None
    maps, extras = method.explain_with_extras(to_framework(IMAGES, framework), LABELS)
    want = last_norm1(framework) if expected == "norm1" else "norm"
    assert method.layer_ == extras["layer"] == want
    maps = np.asarray(maps)
    assert np.all(np.isfinite(maps)) and np.ptp(maps, axis=(1, 2)).max() > 0


def test_the_last_block_output_carries_no_patch_gradient_for_a_class_token_head(torch: Any) -> None:
    # why the default is not the final norm for class-token heads: Grad-CAM there is all zeros
    model = build("torch", "cls")
    maps = xt.GradCAM(model, layer="norm")(IMAGES, LABELS)
    assert np.all(maps == 0)


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "opticam"])
def test_twin_vits_give_the_same_cam(both: None, name: str) -> None:
    t, k = twin_vit(0)
    params = {"max_iter": 5} if name == "opticam" else {}
    a = xt.method(name, t, **params)(IMAGES, LABELS)
    b = np.asarray(xt.method(name, k, **params)(to_framework(IMAGES, "tf"), LABELS))
    np.testing.assert_allclose(normalized(a), normalized(b), atol=2e-4)
    assert np.ptp(a, axis=(1, 2)).min() > 0


# -- reshape= ------------------------------------------------------------------------------------------------
def test_explicit_grid_and_callable_match_the_automatic_grid(framework: str) -> None:
    model = build(framework)
    x = to_framework(IMAGES, framework)
    layer = last_norm1(framework)
    auto = np.asarray(xt.GradCAM(model, layer=layer)(x, LABELS))
    np.testing.assert_allclose(np.asarray(xt.GradCAM(model, layer=layer, reshape=(4, 4))(x, LABELS)), auto, atol=1e-6)
    np.testing.assert_allclose(np.asarray(xt.GradCAM(model, layer=layer, reshape=4)(x, LABELS)), auto, atol=1e-6)
    if framework == "torch":
        def grid(t: Any) -> Any:  # drop the class token, (N, 16, C) -> (N, C, 4, 4)
            return t[:, 1:].reshape(len(t), 4, 4, -1).permute(0, 3, 1, 2)
    else:
        import tensorflow as tf

        def grid(t: Any) -> Any:  # (N, 4, 4, C): Keras' own layout
            return tf.reshape(t[:, 1:], (-1, 4, 4, t.shape[-1]))
    np.testing.assert_allclose(np.asarray(xt.GradCAM(model, layer=layer, reshape=grid)(x, LABELS)), auto, atol=1e-6)


def test_reshape_errors(framework: str) -> None:
    model = build(framework)
    x = to_framework(IMAGES, framework)
    with pytest.raises(xt.ParameterError, match="reshape must be None"):
        xt.GradCAM(model, reshape="grid")
    with pytest.raises(xt.ParameterError, match="reshape"):
        xt.GradCAM(model, reshape=(0, 4))
    with pytest.raises(xt.LayerError, match=r"needs 25 patch tokens.*only 17"):
        xt.GradCAM(model, layer=last_norm1(framework), reshape=(5, 5))(x, LABELS)
    with pytest.raises(xt.LayerError, match="already spatial"):
        xt.GradCAM(model, layer="patch", reshape=(4, 4))(x, LABELS)
    with pytest.raises(xt.LayerError, match="rank-4"):
        xt.GradCAM(model, layer=last_norm1(framework), reshape=lambda t: t)(x, LABELS)
    # the patch embedding is still a valid explicit choice
    maps = np.asarray(xt.GradCAM(model, layer="patch")(x, LABELS))
    assert maps.shape == (3, 16, 16) and np.all(np.isfinite(maps))


def test_tokens_that_form_no_grid_say_how_to_fix_it(torch: Any) -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Conv2d(3, 4, 4, stride=4)
            self.mix = torch.nn.Linear(16, 7)
            self.tokens = torch.nn.Identity()

        def forward(self, x: Any) -> Any:
            t = self.mix(self.embed(x).flatten(2))      # (N, 4, 7)
            return self.tokens(t.transpose(1, 2)).mean(dim=1)   # 7 tokens of 4 channels

    with pytest.raises(xt.LayerError, match=r"7 tokens.*reshape=\(h, w\)"):
        xt.GradCAM(Odd().eval(), layer="tokens")(IMAGES, [0, 1, 2])


def test_cam_family_on_a_vit(torch: Any) -> None:
    """Every registered CAM that runs on token layers through the shared capture."""
    model = build("torch")
    for name in xt.list_methods():
        cls = xt.method(name, None).__class__
        if cls.family != "cam" or name in ("ablationcam",):  # Ablation-CAM writes feature maps back
            continue
        maps = xt.method(name, model, batch_size=8)(IMAGES[:2], LABELS[:2])
        assert maps.shape == (2, 16, 16) and np.all(np.isfinite(maps)), name


def test_evaluate_reports_the_layer_used(torch: Any) -> None:
    table = xt.evaluate(build("torch"), IMAGES, LABELS, methods=["gradcam", "saliency"])
    assert table.params["methods"]["gradcam"]["layer used"] == "blocks.1.norm1"
    assert "layer used" not in table.params["methods"]["saliency"]
