"""Tabular rows ``(N, F)`` and series (``(N, C, T)`` PyTorch, ``(N, T, C)`` Keras) through
the black-box methods (RISE, Sobol, HSIC over features / segments of time) and the metrics,
with analytic references on linear models; the input kind checked before any model call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import linear_model

RNG = np.random.default_rng(3)
W = RNG.standard_normal((2, 6)).astype(np.float32)
ROWS = RNG.random((3, 6), dtype=np.float32) + 0.5
SERIES_W = RNG.standard_normal((2, 3, 12)).astype(np.float32)
SERIES = RNG.random((2, 3, 12), dtype=np.float32)


def series_in(framework: str) -> np.ndarray:
    return SERIES if framework == "torch" else np.ascontiguousarray(SERIES.transpose(0, 2, 1))


def test_rise_on_a_linear_model_is_the_contribution(framework: str) -> None:
    # f(x ⊙ M) = Σ_j c_j M_j: RISE gives S_i = c_i + p Σ_{j≠i} c_j, i.e. (1 − p) c + constant
    model = linear_model(framework, W)
    maps = np.asarray(xt.Rise(model, nb_samples=4000, batch_size=4000, seed=0)(ROWS, 0))
    c = W[0] * ROWS
    s, c = maps - maps.mean(1, keepdims=True), c - c.mean(1, keepdims=True)
    slope = (s * c).sum(1) / (c * c).sum(1)          # least squares s ≈ slope · c, per row
    np.testing.assert_allclose(slope, 0.5, atol=0.06)
    assert min(np.corrcoef(a, b)[0, 1] for a, b in zip(s, c, strict=True)) > 0.98


def test_sobol_on_a_linear_model_is_the_share_of_variance(framework: str) -> None:
    # inpainting to 0 with M_j ~ U(0, 1): the total index of feature i is c_i² / Σ c_j²
    model = linear_model(framework, W)
    maps = np.asarray(xt.SobolAttribution(model, nb_design=1024)(ROWS, 0))
    c2 = (W[0] * ROWS) ** 2
    np.testing.assert_allclose(maps, c2 / c2.sum(1, keepdims=True), atol=0.02)


def test_hsic_ranks_features_by_contribution(framework: str) -> None:
    model = linear_model(framework, W)
    maps = np.asarray(xt.HsicAttribution(model, nb_design=512)(ROWS, 0))
    c = np.abs(W[0] * ROWS)
    assert np.array_equal(np.argmax(maps, 1), np.argmax(c, 1))
    for m, ci in zip(maps, c, strict=True):
        assert np.corrcoef(np.argsort(np.argsort(m)), np.argsort(np.argsort(ci)))[0, 1] > 0.8


def test_series_segments_of_time(framework: str) -> None:
    model = linear_model(framework, SERIES_W)
    x = series_in(framework)
    c = (SERIES_W[0] * SERIES).sum(axis=1)                                 # (N, T) per time step
    sobol = np.asarray(xt.SobolAttribution(model, grid_size=4, nb_design=256)(x, 0))
    assert sobol.shape == (2, 12)
    segments = (c.reshape(2, 4, 3).sum(-1)) ** 2
    share = segments / segments.sum(1, keepdims=True)
    # each segment's three steps carry its index (bicubic between segments, so compare centres)
    np.testing.assert_allclose(sobol[:, 1::3], share, atol=0.06)
    for name, params in (("rise", {"nb_samples": 64, "grid_size": 4}), ("hsic", {"nb_design": 32, "grid_size": 4})):
        maps = np.asarray(xt.method(name, model, **params)(x, 0))
        assert maps.shape == (2, 12) and np.all(np.isfinite(maps)) and np.ptp(maps) > 0


@pytest.mark.parametrize(("name", "params"), [
    ("rise", {"nb_samples": 64, "grid_size": 4, "seed": 1}),
    ("sobol", {"nb_design": 16, "grid_size": 4}),
    ("hsic", {"nb_design": 32, "grid_size": 4, "seed": 1}),
])
def test_series_and_rows_twins(both: None, name: str, params: dict[str, Any]) -> None:
    maps = {fw: np.asarray(xt.method(name, linear_model(fw, SERIES_W), **params)(series_in(fw), 1)) for fw in ("torch", "tf")}
    np.testing.assert_allclose(maps["torch"], maps["tf"], rtol=1e-4, atol=1e-5)
    rows = {fw: np.asarray(xt.method(name, linear_model(fw, W), **params)(ROWS, 1)) for fw in ("torch", "tf")}
    np.testing.assert_allclose(rows["torch"], rows["tf"], rtol=1e-4, atol=1e-5)


def test_metrics_on_rows_and_series(framework: str) -> None:
    model = linear_model(framework, W)
    maps = W[0] * ROWS  # the exact contributions: deletion falls fastest along them
    deletion = xt.Deletion(model, steps=6)(ROWS, 0, maps)
    reverse = xt.Deletion(model, steps=6)(ROWS, 0, -maps)
    assert deletion.curves.shape == (3, 7) and np.all(deletion.scores < reverse.scores)
    assert np.all(np.isfinite(xt.Insertion(model, steps=6)(ROWS, 0, maps).scores))
    np.testing.assert_allclose(xt.MuFidelity(model, nb_samples=64)(ROWS, 0, maps).scores, 1.0, atol=1e-5)
    series_model = linear_model(framework, SERIES_W)
    series_maps = (SERIES_W[0] * SERIES).sum(axis=1)
    result = xt.Deletion(series_model, steps=4)(series_in(framework), 0, series_maps)
    assert result.curves.shape == (2, 5) and np.all(np.isfinite(result.scores))


class Exploding:
    """A model that must never be called (the checks come first)."""

    def __call__(self, x: Any) -> Any:
        raise AssertionError("the model was called")


def test_input_kind_and_geometry_are_checked_before_any_model_call(torch: Any) -> None:
    class Never(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(6, 2)

        def forward(self, x: Any) -> Any:
            raise AssertionError("the model was called")

    model = Never()
    with pytest.raises(xt.InputError, match=r"gradcam explains image inputs; these are tabular inputs of shape \(3, 6\); methods for tabular inputs: .*integrated_gradients.*rise"):
        xt.GradCAM(model)(ROWS, 0)
    with pytest.raises(xt.ParameterError, match="blurring"):
        xt.SobolAttribution(model, perturbation="blurring")(ROWS, 0)
    with pytest.raises(xt.ParameterError, match="longer than the series"):
        xt.Rise(model, grid_size=13)(SERIES, 0)
    np_model = xt.NumpyModel(Exploding(), channel_axis=1)
    with pytest.raises(xt.ParameterError, match="longer than the series"):
        xt.HsicAttribution(np_model, grid_size=20)(SERIES, 0)


def test_black_box_methods_on_a_numpy_tabular_model() -> None:
    model = xt.NumpyModel(lambda x: x @ W.T, channel_axis=1)
    for name, params in (("rise", {"nb_samples": 256}), ("sobol", {"nb_design": 64}), ("hsic", {"nb_design": 64})):
        maps = xt.method(name, model, **params)(ROWS, 0)
        assert maps.shape == (3, 6) and np.all(np.isfinite(maps))
