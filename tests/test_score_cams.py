"""Score-CAM and Ablation-CAM: analytic and NumPy references, both Score-CAM variants,
streaming in chunks of batch_size, twins, the contract, errors before any model call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _cam_models import explain, feature_model, relu2_and_head, twin_disagreement, upsample
from _shared import CountedModel

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, check_method, cnn, to_framework


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _min_max(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(axis=(-2, -1), keepdims=True), a.max(axis=(-2, -1), keepdims=True)
    return (a - lo) / (hi - lo + 1e-12)


def _features_with_a_constant_channel(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature maps (3 images, 4 channels, 5 × 6) with channel 2 constant, a GAP head, biases."""
    rng = np.random.default_rng(seed)
    x = rng.random((3, 4, 5, 6), dtype=np.float32)
    x[:, 2] = 0.25
    return x, rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)


# -- Score-CAM --------------------------------------------------------------------------------
def test_scorecam_official_on_gap_head(framework: str) -> None:
    """A = x, so x ⊙ H_k has GAP features mean_p(x ⊙ H_k): s_k = softmax(W · that + b)_c;
    the constant channel is skipped (weight 0)."""
    x, weight, bias = _features_with_a_constant_channel()
    targets = np.array([0, 2, 1])
    masks = _min_max(x.astype(np.float64))                                   # (N, K, h, w)
    features = (x[:, None] * masks[:, :, None]).mean(axis=(3, 4))            # (N, mask k, K)
    probs = _softmax(features @ weight.T + bias)                            # (N, mask k, classes)
    s = probs[np.arange(3), :, targets]
    s[:, 2] = 0.0
    expected = np.maximum((s[:, :, None, None] * x).sum(axis=1), 0)
    maps = explain(framework, feature_model(framework, weight, bias), "scorecam", x, targets, layer="feat")
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)


def test_scorecam_pytorch_grad_cam_variant_on_gap_head(framework: str) -> None:
    """Raw logits softmaxed across channels; the constant channel masks the image to 0 (score b_c)."""
    x, weight, bias = _features_with_a_constant_channel(1)
    targets = np.array([1, 1, 0])
    masks = _min_max(x.astype(np.float64))
    logits = (x[:, None] * masks[:, :, None]).mean(axis=(3, 4)) @ weight.T + bias
    w = _softmax(logits[np.arange(3), :, targets], axis=1)
    expected = np.maximum((w[:, :, None, None] * x).sum(axis=1), 0)
    model = feature_model(framework, weight, bias)
    maps = explain(framework, model, "scorecam", x, targets, layer="feat", variant="pytorch_grad_cam", activation=None)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)


def test_scorecam_with_equal_scores(framework: str) -> None:
    """Reference B1's test: every masked image scores the same (a head of zeros) — the official
    weights are that probability, pytorch-grad-cam's are 1/K over every channel."""
    x, _, bias = _features_with_a_constant_channel(2)
    model = feature_model(framework, np.zeros((3, 4), np.float32), bias)
    official = explain(framework, model, "scorecam", x, [0, 1, 2], layer="feat")
    p = _softmax(bias.astype(np.float64))[[0, 1, 2]]
    varying = x.sum(axis=1) - x[:, 2]
    np.testing.assert_allclose(official, p[:, None, None] * varying, rtol=1e-5)
    other = explain(framework, model, "scorecam", x, [0, 1, 2], layer="feat", variant="pytorch_grad_cam")
    np.testing.assert_allclose(other, x.sum(axis=1) / 4, rtol=1e-5)


def _scorecam_reference(
    framework: str, images: np.ndarray, targets: np.ndarray, variant: str, layer: str
) -> np.ndarray:
    """Score-CAM the straightforward way: every mask materialised in NumPy, one forward."""
    model = cnn(framework, seed=5)
    acts, _, _ = relu2_and_head(framework, images, layer=layer)
    n, k = acts.shape[:2]
    up = upsample(acts.reshape(n * k, *acts.shape[2:]), 16).reshape(n, k, 16, 16)
    masked = images[:, None] * _min_max(up)[:, :, None]                    # (N, K, C, H, W)
    adapter = xt.adapt(model)
    batch = to_framework(masked.reshape(n * k, 3, 16, 16).astype(np.float32), framework)
    outputs = as_numpy(adapter.forward(adapter.to_model(batch))).astype(np.float64).reshape(n, k, -1)
    if variant == "official":
        s = _softmax(outputs)[np.arange(n), :, targets]
        s[acts.max(axis=(2, 3)) == acts.min(axis=(2, 3))] = 0.0
        return np.maximum((s[:, :, None, None] * up).sum(axis=1), 0)
    w = _softmax(outputs[np.arange(n), :, targets], axis=1)
    return upsample(np.maximum((w[:, :, None, None] * acts).sum(axis=1), 0), 16)


@pytest.mark.parametrize("variant", ["official", "pytorch_grad_cam"])
@pytest.mark.parametrize("layer", ["relu2", "conv2"])
def test_scorecam_matches_a_numpy_reference_on_the_cnn(framework: str, variant: str, layer: str) -> None:
    """conv2 (before the ReLU) has negative activations: the official ReLU after upsampling
    and the other variant's before it give different maps there."""
    x, targets = _images(), np.array([0, 3, 1])
    expected = _scorecam_reference(framework, x, targets, variant, layer)
    params: dict[str, Any] = {"variant": variant, "activation": "softmax" if variant == "official" else None}
    maps = explain(framework, cnn(framework, seed=5), "scorecam", x, targets, layer=layer, batch_size=7, **params)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6 * expected.max())
    assert expected.max() > 0


def test_scorecam_pytorch_grad_cam_variant_is_the_example_plugins_masked_cam(framework: str, example_plugin: Any) -> None:
    """The example third-party plugin computes Score-CAM as pytorch-grad-cam does: same maps,
    under another name (both registered)."""
    assert {"masked_cam", "scorecam"} <= set(xt.list_methods())
    x, model = _images(), cnn(framework)
    masked = explain(framework, model, "masked_cam", x, [0, 1, 2], layer="relu2", batch_size=9)
    ours = explain(framework, model, "scorecam", x, [0, 1, 2], layer="relu2", variant="pytorch_grad_cam", activation=None)
    np.testing.assert_allclose(ours, masked, rtol=1e-5, atol=1e-7)


# -- Ablation-CAM ------------------------------------------------------------------------------
def test_ablationcam_gap_linear_anchor(framework: str) -> None:
    """relu2 → GAP → fc: ablating channel k to 0 lowers the logit by w_k^c · mean(A_k), so
    w_k = w_k^c · mean(A_k) / y_c (reference B9)."""
    x, targets = _images(seed=1), np.array([2, 0, 3])
    acts, head, logits = relu2_and_head(framework, x)
    y = logits[np.arange(3), targets][:, None]
    weights = head[targets] * acts.mean(axis=(2, 3)) / y
    expected = upsample(np.maximum((weights[:, :, None, None] * acts).sum(axis=1), 0), 16)
    maps = explain(framework, cnn(framework, seed=5), "ablationcam", x, targets, layer="relu2", batch_size=6)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * expected.max())
    assert expected.max() > 0


def test_ablationcam_ablation_value(framework: str) -> None:
    """A channel set to v instead of its values: the GAP head loses W_ck · (mean(A_k) − v)."""
    x, weight, bias = _features_with_a_constant_channel(3)
    targets, value = np.array([0, 1, 2]), -1.5
    y = (x.mean(axis=(2, 3)) @ weight.T + bias)[np.arange(3), targets][:, None].astype(np.float64)
    w = weight[targets] * (x.mean(axis=(2, 3)) - value) / y
    expected = np.maximum((w[:, :, None, None] * x).sum(axis=1), 0)
    model = feature_model(framework, weight, bias)
    maps = explain(framework, model, "ablationcam", x, targets, layer="feat", ablation_value=value, batch_size=5)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * expected.max())


def test_ablationcam_on_a_vit_ablates_a_channel_of_every_token(torch: Any) -> None:
    """A token layer (N, tokens, K): channel k is set to 0 in every token (class token too),
    the model run on with a hook of its own; the weights then multiply the patch tokens' grid."""
    from _vit_models import torch_vit, vit_weights

    model = torch_vit(vit_weights(0))
    layer, x, targets = "blocks.1.norm1", _images(2), np.array([0, 4])
    module = dict(model.named_modules())[layer]
    seen: dict[str, Any] = {}
    handle = module.register_forward_hook(lambda _m, _i, out: seen.__setitem__("tokens", out.detach().clone()))
    with torch.no_grad():
        y = model(torch.from_numpy(x))[np.arange(2), targets].numpy().astype(np.float64)
    handle.remove()
    tokens = seen["tokens"].numpy().astype(np.float64)                      # (2, 1 + 16, K)
    k = tokens.shape[2]
    drops = np.zeros((2, k))
    for channel in range(k):
        def ablate(_m: Any, _i: Any, out: Any, channel: int = channel) -> Any:
            out = out.clone()
            out[..., channel] = 0.0
            return out

        handle = module.register_forward_hook(ablate)
        with torch.no_grad():
            drops[:, channel] = y - model(torch.from_numpy(x))[np.arange(2), targets].numpy()
        handle.remove()
    grid = tokens[:, 1:].reshape(2, 4, 4, k).transpose(0, 3, 1, 2)
    expected = upsample(np.maximum(((drops / y[:, None])[:, :, None, None] * grid).sum(axis=1), 0), 16)
    maps = explain("torch", model, "ablationcam", x, targets, layer=layer, batch_size=5)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * expected.max())
    assert expected.max() > 0
    with pytest.raises(xt.ParameterError, match="reshape"):
        xt.AblationCAM(model, reshape=lambda t: t)


@pytest.mark.parametrize("key", ["scorecam", "ablationcam"])
def test_twin_vits_agree(both: None, key: str) -> None:
    from _vit_models import twin_vit

    x, maps = _images(2), []
    for framework, model in zip(("torch", "tf"), twin_vit(0), strict=True):
        maps.append(explain(framework, model, key, x, [0, 4], batch_size=7))
    assert np.abs(maps[0] - maps[1]).max() <= 1e-4 * np.abs(maps[0]).max()
    assert np.abs(maps[0]).max() > 0


# -- both: streaming, contract, twins, errors ---------------------------------------------------
STREAMED = {
    "scorecam": {},
    "scorecam_pgc": {"variant": "pytorch_grad_cam", "activation": None},
    "ablationcam": {},
}


def _method(key: str) -> str:
    return key.split("_")[0]


@pytest.mark.parametrize("key", STREAMED)
def test_streamed_in_full_chunks_of_batch_size(torch: Any, key: str) -> None:
    """Every forward pass holds at most batch_size inputs, the pairs of all images are cut in
    full chunks across images, and the maps do not depend on batch_size."""
    x, weight, bias = _features_with_a_constant_channel(4)
    model = feature_model("torch", weight, bias)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0])))
    maps = {}
    for batch_size in (1, 5, 64):
        sizes.clear()
        maps[batch_size] = explain("torch", model, _method(key), x, None, layer="feat", batch_size=batch_size, **STREAMED[key])
        pairs = 3 * 3 if key == "scorecam" else 3 * 4  # the official Score-CAM skips the constant channel
        targets_and_capture = [min(3, batch_size)] * (2 * -(-3 // batch_size))
        assert sizes[: len(targets_and_capture)] == targets_and_capture
        streamed = sizes[len(targets_and_capture):]
        assert streamed == [batch_size] * (pairs // batch_size) + ([pairs % batch_size] if pairs % batch_size else [])
    np.testing.assert_allclose(maps[1], maps[64], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(maps[5], maps[64], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key", STREAMED)
def test_host_reads_do_not_grow_with_the_chunks(torch: Any, key: str) -> None:
    from test_host_syncs import _host_reads

    x = torch.from_numpy(_images(2))
    model = cnn("torch")

    def reads(batch_size: int) -> Any:
        method = xt.method(_method(key), model, layer="relu2", batch_size=batch_size, **STREAMED[key])
        return _host_reads(torch, lambda: method(x, [0, 1]))

    few, many = reads(48), reads(4)
    assert sum(few.values()) > 0
    assert many == few


@pytest.mark.parametrize("key", STREAMED)
def test_contract(pytestconfig: pytest.Config, key: str) -> None:
    cls = xt.api.get_registry().method(_method(key)).cls
    check_method(cls, {"layer": "relu2", "batch_size": 7, **STREAMED[key]}, frameworks=pytestconfig.frameworks)


@pytest.mark.parametrize("key", STREAMED)
def test_twins_agree_within_1e4_of_the_max(both: None, key: str) -> None:
    for layer in ("relu2", "conv2"):
        assert twin_disagreement(_method(key), layer, **STREAMED[key]) <= 1e-4, f"{key} at {layer}"


@pytest.mark.parametrize(
    ("name", "params", "error"),
    [
        ("scorecam", {"variant": "paper"}, xt.ParameterError),
        ("scorecam", {"activation": "relu"}, xt.ParameterError),
        ("ablationcam", {"ablation_value": float("nan")}, xt.ParameterError),
        ("ablationcam", {"ablation_value": "zero"}, xt.ParameterError),
        ("scorecam", {"batch_size": 0}, xt.ParameterError),
        ("ablationcam", {"layer": ""}, xt.LayerError),
    ],
)
def test_bad_parameters_fail_at_construction(framework: str, name: str, params: dict[str, Any], error: type) -> None:
    counted = CountedModel(framework)
    with pytest.raises(error):
        xt.method(name, counted.model, **params)
    assert counted.calls == 0


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
def test_bad_layer_fails_before_any_model_call(framework: str, name: str) -> None:
    counted = CountedModel(framework)
    with pytest.raises(xt.LayerError, match="not found"):
        xt.method(name, counted.model, layer="conv9")(to_framework(_images(1), framework), [0])
    assert counted.calls == 0
