"""The demo data set generator and the shipped twin demo CNN (PyTorch and Keras).

The data tests need no framework. The model tests take the ``framework`` / ``torch`` /
``keras`` / ``both`` fixtures of ``conftest.py``, so ``pytest --framework torch`` runs
(and needs) only PyTorch; the twin comparisons run when both frameworks are under test.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from xai_toolbox.demo.data import CLASS_NAMES, ShapesData, make_shapes, to_channels_first
from xai_toolbox.demo.model import (
    DEMO_IMAGE_SIZE,
    DEMO_SEEDS,
    build_keras_model,
    build_torch_model,
    copy_torch_weights_to_keras,
    load_demo_model,
)
from xai_toolbox.errors import LayerError, ParameterError

HELDOUT_IMAGES = 300
MIN_ACCURACY = 0.95


@functools.cache
def heldout_data() -> ShapesData:
    """Fresh images from a seed the training script never used."""
    train_seeds = range(DEMO_SEEDS.train, DEMO_SEEDS.train + 1000)
    assert DEMO_SEEDS.heldout not in train_seeds
    return make_shapes(HELDOUT_IMAGES, seed=DEMO_SEEDS.heldout, size=DEMO_IMAGE_SIZE)


@functools.cache
def heldout_logits(framework: str) -> np.ndarray:
    """Logits of the shipped model on the held-out images (cached: each twin runs once)."""
    images = heldout_data().images
    if framework == "torch":
        import torch

        with torch.no_grad():
            return load_demo_model("torch")(torch.from_numpy(to_channels_first(images))).numpy()
    import keras

    return keras.ops.convert_to_numpy(load_demo_model("tf")(images, training=False))


# --- data ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_data_and_other_seeds_differ() -> None:
    a, b, c = make_shapes(32, seed=5), make_shapes(32, seed=5), make_shapes(32, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.masks, c.masks)


def test_shapes_dtypes_and_ranges() -> None:
    data = make_shapes(200, seed=0)
    assert data.images.shape == (200, 64, 64, 3) and data.images.dtype == np.float32
    assert data.labels.shape == (200,) and data.labels.dtype == np.int64
    assert data.masks.shape == (200, 64, 64) and data.masks.dtype == np.bool_
    assert data.class_names == CLASS_NAMES and len(data) == 200
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert set(np.unique(data.labels)) == set(range(len(CLASS_NAMES)))
    assert make_shapes(3, seed=0, size=48).images.shape == (3, 48, 48, 3)


def test_every_object_is_non_empty_and_fully_inside_the_image() -> None:
    masks = make_shapes(200, seed=1).masks
    assert masks.reshape(200, -1).sum(axis=1).min() >= 50  # the smallest triangle is ~60 px
    border = masks[:, [0, -1], :].any() or masks[:, :, [0, -1]].any()
    assert not border, "an object touches the image border, so it may be cut off"


def test_the_object_is_drawn_where_its_mask_is() -> None:
    data = make_shapes(50, seed=2)
    for image, mask in zip(data.images, data.masks, strict=True):
        inside, outside = image[mask], image[~mask]
        # The object is one flat colour (plus pixel noise); the background is not that colour.
        assert inside.std(axis=0).max() < 0.05
        gap = np.abs(outside.mean(axis=0) - inside.mean(axis=0)).max()
        assert gap > 0.2


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ParameterError):
        make_shapes(-1, seed=0)
    with pytest.raises(ParameterError):
        make_shapes(4, seed=0, size=16)
    assert make_shapes(0, seed=0).images.shape == (0, 64, 64, 3)


# --- the shipped model ---------------------------------------------------------------------


def test_shipped_model_is_accurate_on_heldout_data(framework: str) -> None:
    logits = heldout_logits(framework)
    assert logits.shape == (HELDOUT_IMAGES, len(CLASS_NAMES))
    accuracy = float((logits.argmax(axis=1) == heldout_data().labels).mean())
    assert accuracy >= MIN_ACCURACY, f"{framework}: held-out accuracy {accuracy:.3f}"


def test_torch_and_keras_twins_agree(both: None) -> None:
    torch_logits, tf_logits = heldout_logits("torch"), heldout_logits("tf")
    np.testing.assert_array_equal(torch_logits.argmax(axis=1), tf_logits.argmax(axis=1))
    np.testing.assert_allclose(torch_logits, tf_logits, rtol=0, atol=1e-4)


def test_twins_have_parallel_layer_names(both: None, torch: Any) -> None:
    torch_model = load_demo_model("pytorch")
    keras_model = load_demo_model("tensorflow")
    torch_names = [name for name, _ in torch_model.named_children()]
    keras_names = [layer.name for layer in keras_model.layers[1:]]  # skip the InputLayer
    assert torch_names == keras_names
    assert {"conv3", "relu3", "gap", "fc"} <= set(torch_names)
    assert not torch_model.training
    # Post-ReLU features are addressable and have matching shapes (NCHW vs NHWC).
    assert tuple(keras_model.get_layer("relu3").output.shape) == (None, 16, 16, 64)
    features = {}
    torch_model.relu3.register_forward_hook(lambda m, i, out: features.setdefault("relu3", out))
    torch_model(torch.zeros(1, 3, 64, 64))
    assert tuple(features["relu3"].shape) == (1, 64, 16, 16)


def test_unknown_framework_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown framework"):
        load_demo_model("mxnet")


def test_a_framework_without_the_demo_architecture_says_so() -> None:
    pytest.importorskip("jax")
    with pytest.raises(ValueError, match="no test model 'demo'"):
        load_demo_model("jax")


# --- the weight copier ---------------------------------------------------------------------


def _small_torch_twin(torch: Any) -> Any:
    nn = torch.nn
    return nn.Sequential(
        OrderedDict(
            c1=nn.Conv2d(2, 4, kernel_size=3, padding=1),
            act=nn.ReLU(),
            c2=nn.Conv2d(4, 6, kernel_size=5, padding=2, bias=False),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(6, 3),
        )
    )


def _small_keras_twin(keras: Any, names: dict[str, str]) -> Any:
    inputs = keras.Input(shape=(9, 7, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name=names["c1"])(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 5, padding="same", use_bias=False, name=names["c2"])(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name=names["head"])(x))


@pytest.mark.parametrize("renamed", [False, True])
def test_copy_torch_weights_to_keras_makes_outputs_equal(
    torch: Any, keras: Any, renamed: bool
) -> None:
    torch.manual_seed(0)
    torch_model = _small_torch_twin(torch).eval()
    names = {"c1": "c1", "c2": "c2", "head": "head"}
    layer_map = None
    if renamed:  # Keras names differ: the layer_map says which is which
        names = {"c1": "k_conv_a", "c2": "k_conv_b", "head": "k_dense"}
        layer_map = names
    keras_model = _small_keras_twin(keras, names)
    copy_torch_weights_to_keras(torch_model, keras_model, layer_map)

    x = np.random.default_rng(0).normal(size=(5, 9, 7, 2)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(to_channels_first(x))).numpy()
    got = keras.ops.convert_to_numpy(keras_model(x, training=False))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_copy_torch_weights_to_keras_conv1d(torch: Any, keras: Any) -> None:
    torch.manual_seed(1)
    conv = torch.nn.Conv1d(3, 5, kernel_size=3, padding=1)
    torch_model = torch.nn.Sequential(OrderedDict(conv=conv))
    inputs = keras.Input(shape=(11, 3))
    keras_model = keras.Model(
        inputs, keras.layers.Conv1D(5, 3, padding="same", name="conv")(inputs)
    )
    copy_torch_weights_to_keras(torch_model, keras_model)

    x = np.random.default_rng(1).normal(size=(2, 11, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy()
    got = keras.ops.convert_to_numpy(keras_model(x))
    np.testing.assert_allclose(got.transpose(0, 2, 1), expected, rtol=0, atol=1e-5)


def test_copy_torch_weights_to_keras_reports_mismatches(torch: Any, keras: Any) -> None:
    nn = torch.nn
    with pytest.raises(LayerError, match="does not have"):  # names differ, no layer_map
        copy_torch_weights_to_keras(
            _small_torch_twin(torch),
            _small_keras_twin(keras, {"c1": "x1", "c2": "x2", "head": "x3"}),
        )
    with pytest.raises(LayerError, match="do not match"):  # different numbers of classes
        copy_torch_weights_to_keras(build_torch_model(3), build_keras_model(4))
    with pytest.raises(LayerError, match="no torch module was copied"):  # head left out
        copy_torch_weights_to_keras(
            nn.Sequential(OrderedDict(c1=nn.Conv2d(2, 4, 3), c2=nn.Conv2d(4, 6, 5, bias=False))),
            _small_keras_twin(keras, {"c1": "c1", "c2": "c2", "head": "head"}),
        )
    with pytest.raises(LayerError, match="only Conv1d"):
        copy_torch_weights_to_keras(
            nn.Sequential(OrderedDict(emb=nn.Embedding(4, 4))), build_keras_model(5)
        )
