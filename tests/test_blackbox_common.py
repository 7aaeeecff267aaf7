"""What the four black-box methods share: contract, twins, batch-size invariance, NumPy models,
parameter errors before any model call, and memory that does not grow with the sample count."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import as_numpy, check_method, cnn, normalized, to_framework, twin_cnn

FAST = {
    "rise": {"nb_samples": 40, "grid_size": 4, "seed": 1},
    "sobol": {"nb_design": 4, "grid_size": 3},
    "hsic": {"nb_design": 40, "grid_size": 4, "seed": 1},
    "occlusion": {"patch_size": 5, "stride": 4},
}
METHODS = list(FAST)


def method_class(name: str) -> type:
    return xt.api.get_registry().method(name).cls


@pytest.mark.parametrize("name", METHODS)
def test_contract(name: str, pytestconfig: pytest.Config) -> None:
    check_method(method_class(name), FAST[name], frameworks=pytestconfig.frameworks)


def test_registered_names_and_classes() -> None:
    assert {"rise", "sobol", "hsic", "occlusion"} <= set(xt.list_methods())
    assert xt.Rise is method_class("rise") and xt.SobolAttribution is method_class("sobol")
    assert xt.HsicAttribution is method_class("hsic") and xt.Occlusion is method_class("occlusion")
    assert "nb_samples=40" in repr(xt.method("rise", lambda b: b, **FAST["rise"]))


@pytest.mark.parametrize("name", METHODS)
def test_twin_models_give_the_same_map(both: None, name: str) -> None:
    torch_model, keras_model = twin_cnn(seed=1)
    images = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    params = {**FAST[name], "batch_size": 16}
    a = as_numpy(xt.method(name, torch_model, **params)(to_framework(images, "torch"), [0, 3]))
    b = as_numpy(xt.method(name, keras_model, **params)(to_framework(images, "tf"), [0, 3]))
    assert a.shape == b.shape == (2, 16, 16)
    assert np.abs(normalized(a) - normalized(b)).max() <= 1e-4


@pytest.mark.parametrize("name", METHODS)
def test_result_does_not_depend_on_batch_size(framework: str, name: str) -> None:
    net = cnn(framework, seed=2)
    batch = to_framework(np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32), framework)
    maps = [as_numpy(xt.method(name, net, **FAST[name], batch_size=bs)(batch, [1, 2])) for bs in (1, 7, 64)]
    scale = np.abs(maps[2]).max()
    for other in maps[:2]:
        np.testing.assert_allclose(other, maps[2], rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def quadrant_classifier():
    """LogisticRegression on flattened 8×8×3 images whose label is the top-left brightness."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    images = rng.random((1000, 8, 8, 3), dtype=np.float32)
    brightness = images[:, :4, :4].mean(axis=(1, 2, 3))
    labels = (brightness > np.median(brightness)).astype(int)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(images.reshape(1000, -1), labels)
    return clf, images[labels == 1][:3]


@pytest.mark.parametrize("name", METHODS)
def test_plain_numpy_callable_sklearn_model(name: str, quadrant_classifier) -> None:
    """A bare callable (channels last) works, and every method points at the top-left quadrant."""
    clf, images = quadrant_classifier
    model = lambda batch: clf.predict_proba(batch.reshape(len(batch), -1))  # noqa: E731
    params = {
        "rise": {"nb_samples": 400, "grid_size": 4},
        "sobol": {"nb_design": 16, "grid_size": 4},
        "hsic": {"nb_design": 200, "grid_size": 4},
        "occlusion": {"patch_size": 2, "stride": 2},
    }[name]
    maps = xt.method(name, model, **params)(images, [1, 1, 1])
    assert isinstance(maps, np.ndarray) and maps.shape == (3, 8, 8) and maps.dtype == np.float32
    inside = maps[:, :4, :4].mean(axis=(1, 2))
    outside = (maps.sum(axis=(1, 2)) - maps[:, :4, :4].sum(axis=(1, 2))) / 48
    assert np.all(inside > outside), (inside, outside)


class CountingModel:
    """A NumPy model that counts its calls (channels first, 16×16 RGB images, 4 outputs)."""

    def __init__(self) -> None:
        self.calls = 0
        self.model = xt.NumpyModel(self, channel_axis=1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.tile(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True), (1, 4))


BAD_PARAMS = [
    ("rise", {"nb_samples": 0}, "nb_samples"),
    ("rise", {"grid_size": 0}, "grid_size"),
    ("rise", {"preservation_probability": 0.0}, "preservation_probability"),
    ("rise", {"preservation_probability": 1.2}, "preservation_probability"),
    ("rise", {"normalization": "sum"}, "normalization"),
    ("rise", {"seed": -1}, "seed"),
    ("rise", {"baseline": float("nan")}, "baseline"),
    ("sobol", {"nb_design": 24}, "power of two"),
    ("sobol", {"nb_design": 1}, "at least 2"),
    ("sobol", {"perturbation": "noise"}, "perturbation"),
    ("sobol", {"blur_size": 0}, "blur_size"),
    ("sobol", {"amplitude_sigma": 3.0}, "amplitude_sigma"),
    ("hsic", {"nb_design": 3}, "at least 4"),
    ("hsic", {"sampler": "halton"}, "sampler"),
    ("hsic", {"bandwidth": 0.0}, "bandwidth"),
    ("hsic", {"bandwidth": "mean"}, "bandwidth"),
    ("hsic", {"seed": 1.5}, "seed"),
    ("occlusion", {"patch_size": 0}, "patch_size"),
    ("occlusion", {"patch_size": (1, 2, 3)}, "patch_size"),
    ("occlusion", {"stride": "2"}, "stride"),
    ("occlusion", {"baseline": None}, "baseline"),
]


@pytest.mark.parametrize(("name", "params", "match"), BAD_PARAMS)
def test_bad_parameters_fail_at_construction(name: str, params: dict, match: str) -> None:
    counter = CountingModel()
    with pytest.raises(xt.ParameterError, match=match):
        xt.method(name, counter.model, **params)
    assert counter.calls == 0


CALL_ERRORS = [
    ("rise", {"grid_size": 17}, "grid_size=17 is larger than the image"),
    ("sobol", {"grid_size": 20}, "larger than the image"),
    ("hsic", {"grid_size": 17}, "larger than the image"),
    ("occlusion", {"patch_size": (4, 17)}, "larger than the input"),
    ("occlusion", {"patch_size": 3, "stride": 4}, "stride"),
]


@pytest.mark.parametrize(("name", "params", "match"), CALL_ERRORS)
def test_parameters_that_do_not_fit_the_inputs_fail_before_any_model_call(name, params, match) -> None:
    counter = CountingModel()
    explainer = xt.method(name, counter.model, **params)
    images = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    with pytest.raises(xt.ParameterError, match=match):
        explainer(images, [0, 1])
    with pytest.raises(xt.ParameterError, match=match):
        explainer(images)  # top-1 targets would need a forward pass: the check comes first
    assert counter.calls == 0


def test_occlusion_window_rank_must_match_the_positions() -> None:
    calls = []
    model = lambda b: (calls.append(1), b[:, :2])[1]  # noqa: E731
    with pytest.raises(xt.ParameterError, match="one value per axis"):
        xt.Occlusion(model, patch_size=(2, 2))(np.ones((3, 10), np.float32), [0, 1, 0])
    assert not calls


@pytest.mark.parametrize("name", ["rise", "sobol", "hsic"])
def test_grid_methods_check_series_before_any_model_call(name: str) -> None:
    # tabular rows and series are explained (tests/test_tabular_series.py); a grid longer
    # than the series is refused before the model runs
    calls = []
    model = lambda b: (calls.append(1), b.reshape(len(b), -1)[:, :2])[1]  # noqa: E731
    with pytest.raises(xt.ParameterError, match="longer than the series"):
        xt.method(name, model, grid_size=11)(np.ones((3, 10, 2), np.float32), [0, 1, 0])
    assert not calls


def peak_bytes(fn) -> int:
    fn()  # warm caches (interpolation matrices, device constants) before measuring
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def numpy_linear(size: int, rng: np.random.Generator) -> xt.NumpyModel:
    w = rng.normal(size=(3 * size * size, 2)).astype(np.float32)
    return xt.NumpyModel(lambda b: b.reshape(len(b), -1) @ w, channel_axis=1)


def test_rise_memory_does_not_grow_with_nb_samples() -> None:
    """Streamed masks: peak memory with 4000 masks is that with 500 (NumPy backend, tracemalloc)."""
    rng = np.random.default_rng(0)
    model, x = numpy_linear(32, rng), rng.random((1, 3, 32, 32), dtype=np.float32)
    small = peak_bytes(lambda: xt.Rise(model, nb_samples=500, batch_size=32)(x, [0]))
    large = peak_bytes(lambda: xt.Rise(model, nb_samples=4000, batch_size=32)(x, [0]))
    full_masks = 4000 * 32 * 32 * 4  # what materialising the masks would cost: 16 MB
    assert large <= 1.2 * small, (small, large)
    assert large < full_masks / 10


@pytest.mark.parametrize(("name", "small_n", "large_n"), [("sobol", 8, 128), ("hsic", 128, 1024)])
def test_design_methods_memory_grows_only_with_the_low_resolution_design(name, small_n, large_n) -> None:
    """Only the low-resolution design and the scores (O(nb_design · d) numbers) grow, never
    full-resolution masks: the extra peak stays far below one 32×32 mask per forward pass."""
    rng = np.random.default_rng(1)
    model, x = numpy_linear(32, rng), rng.random((1, 3, 32, 32), dtype=np.float32)
    grid = 4
    small = peak_bytes(lambda: xt.method(name, model, nb_design=small_n, grid_size=grid, batch_size=32)(x, [0]))
    large = peak_bytes(lambda: xt.method(name, model, nb_design=large_n, grid_size=grid, batch_size=32)(x, [0]))
    per_point = grid * grid + 2
    low_res_growth = 64 * (large_n - small_n) * per_point  # generous: float64 copies of the design
    assert large - small <= low_res_growth, (small, large)
    assert large - small < (large_n - small_n) * per_point * 32 * 32 * 4 / 100  # full-res masks


def test_progress_bar_names_the_method(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    rng = np.random.default_rng(0)
    model, x = numpy_linear(8, rng), rng.random((1, 3, 8, 8), dtype=np.float32)
    xt.Rise(model, nb_samples=64, grid_size=2, batch_size=16, progress=True)(x, [0])
    assert "rise" in capsys.readouterr().err
