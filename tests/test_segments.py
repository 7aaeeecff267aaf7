"""Segments (extension API): grid labels, renumbering, coalitions to masks on the device,
per-call segments, superpixels (scikit-image, optional), the linear surrogate fit with and
without scikit-learn, and the checks made before any model call."""

from __future__ import annotations

import sys

import eagerpy as ep
import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox._segments import SUPERPIXEL_DEFAULTS
from xai_toolbox.testing import as_numpy, cnn, to_framework

HOST = ep.astensor(np.zeros(1, np.float32))
HOST_ADAPTER = xt.adapt(xt.NumpyModel(lambda a: a))


def test_grid_labels_are_the_cells_of_nearest_upsampling() -> None:
    labels = xe.grid_labels((10, 7), 3)
    cells = np.arange(9, dtype=np.float32).reshape(1, 3, 3)
    upsampled = xe.resize(ep.astensor(cells), (10, 7), "nearest").numpy()[0]
    np.testing.assert_array_equal(labels, upsampled)
    assert set(np.unique(labels)) == set(range(9))
    np.testing.assert_array_equal(xe.grid_labels((5,), 2), [0, 0, 1, 1, 1])  # half-pixel centres


def test_segments_renumber_labels_and_build_masks_by_lookup(framework: str) -> None:
    labels = np.array([[[7, 7, -2], [3, 3, -2]], [[0, 1, 2], [3, 4, 5]]])  # (2, 2, 3)
    segments = xe.Segments(labels, (2, 3), n_items=2)
    np.testing.assert_array_equal(segments.counts, [3, 6])
    np.testing.assert_array_equal(segments.label_map(0), [[2, 2, 0], [1, 1, 0]])  # sorted values
    assert segments.width == 6
    net = cnn(framework)
    adapter = xt.adapt(net)
    like = adapter.to_model(to_framework(np.zeros((1, 3, 16, 16), np.float32), framework))
    coalitions = np.array([[1, 0, 1, 9, 9, 9], [0, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0]], np.float32)
    masks = as_numpy(segments.masks(adapter, like, coalitions, np.array([0, 1, 0])))
    np.testing.assert_array_equal(masks[0], [[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(masks[1], [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(masks[2], [[0, 0, 1], [1, 1, 1]])
    painted = as_numpy(segments.paint(adapter, like, np.array([[5.0, 6.0, 7.0, 0, 0, 0], np.arange(6.0)])))
    np.testing.assert_array_equal(painted[0], [[7, 7, 5], [6, 6, 5]])
    np.testing.assert_array_equal(painted[1], [[0, 1, 2], [3, 4, 5]])


def test_one_label_map_is_shared_by_every_input() -> None:
    segments = xe.Segments(np.array([4, 4, 9, 1]), (4,), n_items=3)
    np.testing.assert_array_equal(segments.counts, [3, 3, 3])
    masks = segments.masks(HOST_ADAPTER, HOST, np.array([[1, 0, 0], [1, 1, 0]]), np.array([2, 0])).numpy()
    np.testing.assert_array_equal(masks, [[0, 0, 0, 1], [1, 1, 0, 1]])  # 1, 4, 9 → 0, 1, 2
    with pytest.raises(xt.InputError, match=r"expected \(3, 4\).*or \(4,\)"):
        xe.Segments(np.zeros((2, 4), int), (4,), n_items=3)


class CountingModel:
    """A NumPy model (channels first) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.model = xt.NumpyModel(self, channel_axis=1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        flat = batch.reshape(len(batch), -1)
        return np.stack([flat.mean(axis=1), flat.max(axis=1)], axis=1)


IMAGES = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)


def test_segments_given_to_the_call_replace_the_segmentation() -> None:
    counter = CountingModel()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (2, 8, 8)) * 10 - 7  # any integers, renumbered per image
    method = xt.FeatureAblation(counter.model, baseline=0.5)
    given = method(IMAGES, [0, 1], segments=labels)
    constructed = xt.FeatureAblation(counter.model, baseline=0.5, segmentation=labels)(IMAGES, [0, 1])
    np.testing.assert_array_equal(given, constructed)
    for i, target in enumerate([0, 1]):  # the drop of each segment, by hand
        full = counter(IMAGES[i : i + 1])[0, target]
        for value in np.unique(labels[i]):
            inside = labels[i] == value
            removed = np.where(inside[None], 0.5, IMAGES[i])
            np.testing.assert_allclose(given[i][inside], full - counter(removed[None])[0, target], rtol=1e-5)
    # the call's segments are for that call only; one map for every image works too
    grid = method(IMAGES, [0, 1])
    np.testing.assert_array_equal(grid, method(IMAGES, [0, 1], segments=xe.grid_labels((8, 8), 8)))
    shared = method(IMAGES, [0, 1], segments=labels[0])
    np.testing.assert_array_equal(shared[0], given[0])


CALL_ERRORS = [
    ({}, {"segments": np.zeros((3, 8, 8), int)}, xt.InputError, r"do not match the inputs"),
    ({}, {"segments": np.zeros((2, 8, 8), np.float32)}, xt.ParameterError, "integer array"),
    ({}, {"segments": np.zeros((2, 8, 8), bool)}, xt.ParameterError, "integer array"),
    ({"segmentation": np.zeros((8, 7), int)}, {}, xt.InputError, r"do not match the inputs"),
    ({"grid_size": 9}, {}, xt.ParameterError, "grid_size=9 is larger than the image"),
]


@pytest.mark.parametrize(("params", "call", "error", "match"), CALL_ERRORS)
def test_call_errors_come_before_any_model_call(params: dict, call: dict, error: type, match: str) -> None:
    counter = CountingModel()
    for name in ("lime", "kernel_shap", "shapley_value_sampling", "feature_ablation"):
        method = xt.method(name, counter.model, **params)
        with pytest.raises(error, match=match):
            method(IMAGES, [0, 1], **call)
    assert counter.calls == 0


def test_series_and_tabular_segments_and_their_errors() -> None:
    counter = CountingModel()
    series = np.random.default_rng(2).random((2, 6, 3), dtype=np.float32)  # (N, T, C), channels last
    model = xt.NumpyModel(lambda b: b.reshape(len(b), -1) @ np.arange(18.0).reshape(18, 1), channel_axis=-1)
    maps = xt.FeatureAblation(model, grid_size=3)(series, [0, 0])
    contributions = (series * np.arange(18.0).reshape(6, 3)).sum(axis=2)  # per time step
    cells = contributions.reshape(2, 3, 2).sum(axis=2)  # 3 cells of 2 steps
    np.testing.assert_allclose(maps, np.repeat(cells, 2, axis=1), rtol=1e-5)
    with pytest.raises(xt.ParameterError, match="grid_size=7 is larger than the series"):
        xt.FeatureAblation(counter.model, grid_size=7)(series.transpose(0, 2, 1), [0, 0])
    assert counter.calls == 0


BAD_PARAMS = [
    ("lime", {"segmentation": "felzenszwalb"}, "segmentation"),
    ("lime", {"segmentation": np.zeros((4, 4))}, "integer array"),
    ("lime", {"grid_size": 0}, "grid_size"),
    ("lime", {"segmentation_params": {"n_segments": 10}}, "apply to segmentation='slic' or 'quickshift' only"),
    ("lime", {"baseline": float("nan")}, "baseline"),
    ("lime", {"nb_samples": 0}, "nb_samples"),
    ("lime", {"kernel_width": 0.0}, "kernel_width"),
    ("lime", {"distance": "manhattan"}, "distance"),
    ("lime", {"distance_space": "pixel"}, "distance_space"),
    ("lime", {"regressor": "elastic"}, "regressor"),
    ("lime", {"regressor": object()}, "regressor"),
    ("lime", {"alpha": -1.0}, "alpha"),
    ("lime", {"seed": -1}, "seed"),
    ("kernel_shap", {"nb_samples": 2}, "at least 3"),
    ("kernel_shap", {"nb_samples": "many"}, "nb_samples"),
    ("kernel_shap", {"paired": "yes"}, "paired"),
    ("shapley_value_sampling", {"nb_samples": 0}, "nb_samples"),
    ("shapley_value_sampling", {"seed": 1.5}, "seed"),
    ("feature_ablation", {"baseline": "mean"}, "baseline"),
]


@pytest.mark.parametrize(("name", "params", "match"), BAD_PARAMS)
def test_bad_parameters_fail_at_construction(name: str, params: dict, match: str) -> None:
    counter = CountingModel()
    with pytest.raises(xt.ParameterError, match=match):
        xt.method(name, counter.model, **params)
    assert counter.calls == 0


def test_superpixels_without_scikit_image_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(xt.ParameterError, match="pip install scikit-image"):
        xt.Lime(CountingModel().model, segmentation="quickshift")


def test_superpixel_segmentation_is_scikit_image_per_image(framework: str) -> None:
    segmentation = pytest.importorskip("skimage.segmentation")
    rng = np.random.default_rng(4)  # patches of colour: images with superpixels to find
    images = (np.kron(rng.random((2, 3, 4, 4)), np.ones((4, 4))) + 0.02 * rng.random((2, 3, 16, 16))).astype(np.float32)
    net = cnn(framework, seed=1)
    x = to_framework(images, framework)
    for method, params in (("slic", {"n_segments": 12}), ("quickshift", {"kernel_size": 2, "max_dist": 10})):
        auto = as_numpy(xt.FeatureAblation(net, segmentation=method, segmentation_params=params)(x, [0, 1]))
        labels = np.stack([
            getattr(segmentation, method)(image.astype(np.float64), **{**SUPERPIXEL_DEFAULTS[method], **params})
            for image in images.transpose(0, 2, 3, 1)
        ])
        given = as_numpy(xt.FeatureAblation(net)(x, [0, 1], segments=labels))
        np.testing.assert_array_equal(auto, given)
        assert len(np.unique(labels[0])) > 4 and len(np.unique(auto[0])) > 4
    counter = CountingModel()
    with pytest.raises(xt.ParameterError, match="segmentation_params for 'slic'"):
        xt.FeatureAblation(counter.model, segmentation="slic", segmentation_params={"segments": 3})(images, [0, 1])
    with pytest.raises(xt.InputError, match="superpixels of images"):
        xt.FeatureAblation(counter.model, segmentation="slic")(images[:, :, 0, 0], [0, 1])  # tabular
    assert counter.calls == 0


# -- the linear surrogate ----------------------------------------------------------------------
def _design(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = (rng.random((60, 7)) < 0.5).astype(np.uint8)
    y = z @ rng.normal(size=7) + 0.3 + 0.05 * rng.normal(size=60)
    return z, y, rng.random(60) + 0.1


@pytest.mark.parametrize("regressor", ["linear", "ridge"])
def test_numpy_fit_without_scikit_learn_matches_scikit_learn(monkeypatch: pytest.MonkeyPatch, regressor: str) -> None:
    pytest.importorskip("sklearn")
    z, y, w = _design()
    with_sklearn = xe.fit_linear_surrogate(z, y, w, regressor=regressor, alpha=0.7)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    without = xe.fit_linear_surrogate(z, y, w, regressor=regressor, alpha=0.7)
    np.testing.assert_allclose(without[0], with_sklearn[0], rtol=1e-9, atol=1e-12)
    assert without[1] == pytest.approx(with_sklearn[1], rel=1e-9)
    with pytest.raises(xt.ParameterError, match="pip install scikit-learn"):
        xe.fit_linear_surrogate(z, y, w, regressor="lasso", alpha=0.01)


def test_ridge_fit_solves_the_weighted_normal_equations() -> None:
    z, y, w = _design(1)
    coef, intercept = xe.fit_linear_surrogate(z, y, w, regressor="ridge", alpha=2.0)
    a = np.hstack([np.ones((60, 1)), z])  # intercept first, not penalised
    penalty = np.diag([0.0] + [2.0] * 7)
    solution = np.linalg.solve(a.T @ (w[:, None] * a) + penalty, a.T @ (w * y))
    np.testing.assert_allclose(coef, solution[1:], rtol=1e-9)
    assert intercept == pytest.approx(solution[0], rel=1e-9)


def test_an_estimator_object_is_copied_and_fitted() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    z, y, w = _design(2)
    estimator = linear_model.Ridge(alpha=0.5)
    coef, intercept = xe.fit_linear_surrogate(z, y, w, regressor=estimator)
    assert not hasattr(estimator, "coef_")  # the user's object stays unfitted
    expected = linear_model.Ridge(alpha=0.5).fit(z, y, sample_weight=w)
    np.testing.assert_allclose(coef, expected.coef_, rtol=1e-12)
    assert intercept == pytest.approx(expected.intercept_)
