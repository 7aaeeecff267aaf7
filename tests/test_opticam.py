"""Opti-CAM: analytic cases (K = 1, initial map), a reference run with torch.optim.Adam,
early stopping, the masked-score gain over Grad-CAM on a trained CNN, twins, batch invariance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.ops import interpolation_matrix
from xai_toolbox.testing import as_numpy, check_method, cnn, normalized, to_framework, twin_cnn


def _images(n: int = 4, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _minmax(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    return (maps - lo) / (hi - lo)


def _upsample(maps: np.ndarray, size: int) -> np.ndarray:
    mh = interpolation_matrix(maps.shape[-2], size, "bilinear")
    mw = interpolation_matrix(maps.shape[-1], size, "bilinear")
    return mh @ maps @ mw.T


def _features(model: Any, layer: str, images: np.ndarray, framework: str) -> np.ndarray:
    """Raw activations of ``layer`` as (N, K, h, w), read through the adapter."""
    adapter = xt.adapt(model)
    acts, _, _ = adapter.layer_activations(adapter.to_model(to_framework(images, framework)), layer)
    acts = acts.numpy()
    return acts if framework == "torch" else acts.transpose(0, 3, 1, 2)


def _logits(model: Any, images: np.ndarray, framework: str) -> np.ndarray:
    x = to_framework(images, framework)
    if framework == "torch":
        import torch

        with torch.no_grad():
            return model(x).numpy()
    return np.asarray(model(x, training=False))


def _masked_scores(model: Any, images: np.ndarray, maps: np.ndarray, labels: np.ndarray, framework: str) -> np.ndarray:
    logits = _logits(model, images * maps[:, None], framework)
    return logits[np.arange(len(labels)), labels]


def _one_channel_model(framework: str) -> Any:
    """conv (3 → 1) → max-pool → GAP → linear (1 → 2): the layer "pool" has K = 1 channel."""
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(1, 3, 3, 3)).astype(np.float32)
    bias = np.array([-0.5], np.float32)  # some negative activations, so the ReLU matters
    head = rng.normal(size=(2, 1)).astype(np.float32)
    if framework == "torch":
        import torch

        model = torch.nn.Sequential()
        model.add_module("conv", torch.nn.Conv2d(3, 1, 3, padding=1))
        model.add_module("pool", torch.nn.MaxPool2d(2))
        model.add_module("gap", torch.nn.AdaptiveAvgPool2d(1))
        model.add_module("flat", torch.nn.Flatten())
        model.add_module("fc", torch.nn.Linear(1, 2))
        with torch.no_grad():
            model.conv.weight.copy_(torch.from_numpy(kernel))
            model.conv.bias.copy_(torch.from_numpy(bias))
            model.fc.weight.copy_(torch.from_numpy(head))
            model.fc.bias.zero_()
        return model.eval()
    import keras

    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(1, 3, padding="same", name="conv")(inputs)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(h))
    model.get_layer("conv").set_weights([kernel.transpose(2, 3, 1, 0), bias])
    model.get_layer("fc").set_weights([head.T, np.zeros(2, np.float32)])
    return model


# -- analytic cases ------------------------------------------------------------------------
@pytest.mark.parametrize("normalization", ["max_min", "sigmoid", "max"])
def test_single_feature_map_gives_the_normalized_upsampled_map(framework: str, normalization: str) -> None:
    images = _images(3)
    model = _one_channel_model(framework)
    relu = np.maximum(_features(model, "pool", images, framework)[:, 0], 0.0)
    assert relu.shape == (3, 8, 8) and (relu == 0).any() and relu.max() > 0
    up = _upsample(relu, 16)
    expected = {"max_min": _minmax(up), "sigmoid": 0.5 * (np.tanh(up / 2) + 1),
                "max": up / up.max(axis=(1, 2), keepdims=True)}[normalization]
    x = to_framework(images, framework)
    for max_iter, lr in ((0, 0.1), (6, 0.1), (6, 5.0)):  # softmax(u) = 1 whatever u is
        maps = as_numpy(xt.OptiCAM(model, layer="pool", max_iter=max_iter, lr=lr,
                                   normalization=normalization)(x, [0, 1, 1]))
        np.testing.assert_allclose(maps, expected, atol=2e-6)


def test_initial_map_is_the_normalized_mean_of_relu_features(framework: str) -> None:
    images, labels = _images(3, seed=1), np.array([2, 0, 3])
    model = cnn(framework, seed=4)
    acts = _features(model, "conv2", images, framework)  # pre-ReLU: Opti-CAM applies the ReLU
    assert (acts < 0).any()
    expected = _minmax(_upsample(np.maximum(acts, 0).mean(axis=1), 16))
    method = xt.OptiCAM(model, layer="conv2", max_iter=0)
    maps = as_numpy(method(to_framework(images, framework), labels))
    np.testing.assert_allclose(maps, expected, atol=2e-6)
    assert method.n_iter_.tolist() == [0, 0, 0] and method.history_.shape == (3, 1)
    # The history starts with the masked logit of that map, whatever max_iter is.
    first = _masked_scores(model, images, expected, labels, framework)
    np.testing.assert_allclose(method.history_[:, 0], first, rtol=1e-4, atol=1e-5)
    longer = xt.OptiCAM(model, layer="conv2", max_iter=5)
    longer(to_framework(images, framework), labels)
    np.testing.assert_allclose(longer.history_[:, 0], first, rtol=1e-4, atol=1e-5)


def _reference(model: Any, layer: str, images: np.ndarray, labels: np.ndarray, max_iter: int, lr: float,
               loss: str, normalization: str) -> np.ndarray:
    """Opti-CAM without early stopping as the official code runs it: torch.optim.Adam on u,
    F.interpolate(bilinear, align_corners=False), loss summed over the batch."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    x = torch.from_numpy(images)
    rows, cols = torch.arange(len(labels)), torch.from_numpy(labels)
    captured = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        base = model(x)[rows, cols]
    handle.remove()
    features = F.relu(captured[0])
    u = torch.full((len(labels), features.shape[1], 1, 1), 0.5, requires_grad=True)
    optimizer = torch.optim.Adam([u], lr=lr)

    def saliency(u: torch.Tensor) -> torch.Tensor:
        s = (F.softmax(u, dim=1) * features).sum(dim=1, keepdim=True)
        s = F.interpolate(s, size=x.shape[2:], mode="bilinear", align_corners=False)
        if normalization == "max_min":
            lo, hi = s.amin(dim=(1, 2, 3), keepdim=True), s.amax(dim=(1, 2, 3), keepdim=True)
            return (s - lo) / (hi - lo)
        if normalization == "sigmoid":
            return 0.5 * (torch.tanh(s / 2) + 1)
        return s / s.amax(dim=(1, 2, 3), keepdim=True)

    for _ in range(max_iter):
        gap = base - model(x * saliency(u))[rows, cols]
        objective = gap.sum() if loss == "plain" else gap.abs().sum()
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
    return saliency(u).detach()[:, 0].numpy()


@pytest.mark.parametrize(("loss", "normalization"), [("plain", "max_min"), ("norm", "sigmoid"), ("plain", "max")])
def test_same_trajectory_as_torch_adam(torch: Any, loss: str, normalization: str) -> None:
    model = cnn("torch", seed=2).requires_grad_(False)
    images, labels = _images(3, seed=5), np.array([1, 3, 0])
    expected = _reference(model, "relu2", images, labels, 15, 0.1, loss, normalization)
    ours = xt.OptiCAM(model, layer="relu2", max_iter=15, lr=0.1, loss=loss, normalization=normalization,
                      early_stop=False)
    maps = as_numpy(ours(torch.from_numpy(images), labels))
    np.testing.assert_allclose(maps, expected, atol=2e-5)
    assert np.abs(maps - _reference(model, "relu2", images, labels, 0, 0.1, loss, normalization)).max() > 1e-3


# -- early stopping, scores --------------------------------------------------------------
def test_early_stop_keeps_the_masked_score_non_decreasing(framework: str) -> None:
    images, labels = _images(4), np.array([0, 1, 2, 3])
    model = cnn(framework, seed=2)
    method = xt.OptiCAM(model, layer="conv2", max_iter=40, lr=0.5, return_scores=True)
    maps, scores = method(to_framework(images, framework), labels)
    maps, scores = as_numpy(maps), as_numpy(scores)
    history, n_iter = method.history_, method.n_iter_
    assert history.shape == (4, 41) and scores.shape == (4,)
    assert (n_iter < 40).sum() >= 2, "the settings must make some images stop early"
    every = 40 // 10
    checkpoints = [*range(0, 40, every), 40]
    for i in range(4):
        visited = [history[i, t] for t in checkpoints if not np.isnan(history[i, t])]
        assert all(b >= a for a, b in zip(visited[:-2], visited[1:-1], strict=True))
        assert scores[i] >= max(visited) - 1e-5  # the returned map is the best checkpoint
        np.testing.assert_allclose(scores[i], history[i, n_iter[i]], rtol=1e-4, atol=1e-5)
        if n_iter[i] < 40:  # stopped because the next checkpoint was worse, and not updated since
            stop = n_iter[i] + every
            assert history[i, stop] < history[i, n_iter[i]]
            assert np.isnan(history[i, stop + 1 :]).all()
    assert (scores >= history[:, 0] - 1e-5).all()  # never worse than the initial mean map
    # The scores are those of the returned maps, checked with an independent forward pass.
    np.testing.assert_allclose(scores, _masked_scores(model, images, maps, labels, framework), rtol=1e-4, atol=1e-5)


def test_without_early_stop_every_image_runs_max_iter(framework: str) -> None:
    method = xt.OptiCAM(cnn(framework, seed=2), layer="conv2", max_iter=12, lr=0.5, early_stop=False)
    method(to_framework(_images(4), framework), [0, 1, 2, 3])
    assert method.n_iter_.tolist() == [12] * 4 and not np.isnan(method.history_).any()


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A red (class 0) or green (class 1) 4×4 square at a random place on dim noise."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, (n, 3, 16, 16)).astype(np.float32)
    labels = np.arange(n) % 2
    for i, (r, c) in enumerate(rng.integers(1, 11, (n, 2))):
        images[i, labels[i], r : r + 4, c : c + 4] = 1.0
    return images, labels


def _trained(framework: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """The test CNN trained full-batch for a few Adam steps on :func:`_blobs` (deterministic)."""
    images, labels = _blobs(32, seed=0)
    model = cnn(framework, seed=0, classes=2)
    if framework == "torch":
        import torch

        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
        for _ in range(30):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.zero_grad(set_to_none=True)
        model.eval()
    else:
        import keras
        import tensorflow as tf

        x, y = tf.constant(images.transpose(0, 2, 3, 1)), tf.constant(labels)
        optimizer = keras.optimizers.Adam(0.03)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        for _ in range(30):
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            optimizer.apply_gradients(zip(tape.gradient(value, model.trainable_weights), model.trainable_weights,
                                          strict=True))
    test_images, test_labels = _blobs(6, seed=1)
    accuracy = (_logits(model, test_images, framework).argmax(axis=1) == test_labels).mean()
    assert accuracy == 1.0, f"the tiny CNN did not learn the task (accuracy {accuracy})"
    return model, test_images, test_labels


def test_masked_score_beats_gradcam_on_a_trained_cnn(framework: str) -> None:
    model, images, labels = _trained(framework)
    x = to_framework(images, framework)
    maps, scores = xt.OptiCAM(model, max_iter=50, return_scores=True)(x, labels)
    gradcam = normalized(as_numpy(xt.GradCAM(model)(x, labels))).astype(np.float32)
    baseline = _masked_scores(model, images, gradcam, labels, framework)
    assert (as_numpy(scores) >= baseline).all(), (as_numpy(scores), baseline)


def test_score_fn_is_the_objective(framework: str) -> None:
    images = _images(2, seed=3)
    model = cnn(framework, seed=1)

    def margin(outputs: Any, targets: Any) -> Any:
        return outputs[:, 1] - outputs[:, 2]  # native ops only: works in both frameworks

    method = xt.OptiCAM(model, layer="conv2", max_iter=3, score_fn=margin, return_scores=True)
    maps, scores = method(to_framework(images, framework), None)
    logits = _logits(model, images * as_numpy(maps)[:, None], framework)
    np.testing.assert_allclose(as_numpy(scores), logits[:, 1] - logits[:, 2], rtol=1e-4, atol=1e-5)


# -- contract, twins, batches ------------------------------------------------------------
def test_contract(pytestconfig: pytest.Config) -> None:
    check_method(xt.OptiCAM, {"max_iter": 5}, frameworks=pytestconfig.frameworks)


@pytest.mark.parametrize("params", [{}, {"loss": "norm", "normalization": "sigmoid", "lr": 0.3}])
def test_twin_models_give_the_same_map(both: None, params: dict[str, Any]) -> None:
    torch_model, keras_model = twin_cnn(seed=1)
    images, labels = _images(4, seed=2), np.array([0, 1, 2, 3])
    a = xt.OptiCAM(torch_model, max_iter=10, **params)
    b = xt.OptiCAM(keras_model, max_iter=10, **params)
    maps_a = as_numpy(a(to_framework(images, "torch"), labels))
    maps_b = as_numpy(b(to_framework(images, "tf"), labels))
    assert np.abs(normalized(maps_a) - normalized(maps_b)).max() <= 1e-3
    assert a.n_iter_.tolist() == b.n_iter_.tolist()


def test_one_by_one_or_together_gives_the_same_maps(framework: str) -> None:
    images, labels = _images(5, seed=6), np.array([3, 1, 0, 2, 1])
    model = cnn(framework, seed=2)
    params = {"layer": "conv2", "max_iter": 20, "lr": 0.5}  # some images stop early, others do not
    together = xt.OptiCAM(model, batch_size=5, **params)
    maps = as_numpy(together(to_framework(images, framework), labels))
    assert len(set(together.n_iter_.tolist())) > 1
    chunked = as_numpy(xt.OptiCAM(model, batch_size=2, **params)(to_framework(images, framework), labels))
    alone = xt.OptiCAM(model, **params)
    single, n_iter = [], []
    for i in range(5):
        single.append(as_numpy(alone(to_framework(images[i : i + 1], framework), labels[i : i + 1])))
        n_iter.append(int(alone.n_iter_[0]))
    np.testing.assert_allclose(chunked, maps, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(single), maps, atol=1e-5)
    assert n_iter == together.n_iter_.tolist()


def test_out_of_memory_retries_on_halves_give_the_same_maps(torch: Any) -> None:
    class Picky(torch.nn.Module):
        """Runs out of memory on more than two inputs at a time."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = cnn("torch", seed=2)

        def forward(self, x: Any) -> Any:
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("simulated: out of memory")
            return self.inner(x)

    images, labels = torch.from_numpy(_images(4)), np.array([0, 1, 2, 3])
    params = {"layer": "inner.conv2", "max_iter": 8, "lr": 0.5, "batch_size": 4}
    expected = as_numpy(xt.OptiCAM(Picky().inner, **{**params, "layer": "conv2"})(images, labels))
    with pytest.warns(UserWarning, match="out of memory"):
        maps = as_numpy(xt.OptiCAM(Picky(), **params)(images, labels))
    np.testing.assert_allclose(maps, expected, atol=1e-5)


# -- API ---------------------------------------------------------------------------------
def test_registered_and_returns_native_or_numpy_scores(framework: str) -> None:
    model = cnn(framework)
    method = xt.method("opticam", model, max_iter=2, return_scores=True)
    assert isinstance(method, xt.OptiCAM) and "max_iter=2" in repr(method)
    images = _images(2)
    native = to_framework(images, framework)
    maps, scores = method(native, [0, 1])
    assert type(maps) is type(native) and type(scores) is type(native) and tuple(scores.shape) == (2,)
    layout = images if framework == "torch" else images.transpose(0, 2, 3, 1).copy()
    maps, scores = method.explain(layout, [0, 1])
    assert isinstance(maps, np.ndarray) and isinstance(scores, np.ndarray) and scores.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize(
    ("params", "match"),
    [({"max_iter": -1}, "max_iter"), ({"max_iter": 2.5}, "max_iter"), ({"lr": 0}, "lr"),
     ({"loss": "l2"}, "loss"), ({"normalization": "tanh"}, "normalization"),
     ({"early_stop": "yes"}, "early_stop"), ({"return_scores": 1}, "return_scores")],
)
def test_bad_parameters_are_refused(params: dict[str, Any], match: str) -> None:
    with pytest.raises(xt.ParameterError, match=match):
        xt.OptiCAM(lambda x: x, **params)


def test_non_image_inputs_are_refused(framework: str) -> None:
    from xai_toolbox.testing import linear_model

    model = linear_model(framework, np.ones((2, 5), np.float32))
    with pytest.raises(xt.InputError, match="explains image inputs; these are tabular inputs"):
        xt.OptiCAM(model, max_iter=1)(np.ones((3, 5), np.float32), [0, 1, 0])
