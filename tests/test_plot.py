"""Plotting API: overlays in every layout, grids and curve figures (matplotlib Agg, no pyplot)."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox import plot
from xai_toolbox.base import MetricResult
from xai_toolbox.errors import InputError, ParameterError

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.fixture
def images_nhwc() -> np.ndarray:
    return np.random.default_rng(0).random((3, 8, 10, 3), dtype=np.float32)


@pytest.fixture
def maps() -> np.ndarray:
    m = np.zeros((3, 8, 10), dtype=np.float32)
    m[:, 2, 7] = 5.0  # one hot spot per map
    return m


def test_xt_plot_is_the_module() -> None:
    assert xt.plot is plot


def test_overlay_batch_shape_range_and_blend(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    out = plot.overlay(images_nhwc, maps, alpha=0.25, cmap="jet")
    assert out.shape == (3, 8, 10, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Independent reference: maps min-max normalised to [0, 1], then blended with jet.
    jet = plot.colormap("jet")
    expected = 0.75 * images_nhwc + 0.25 * jet(maps / 5.0)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_overlay_alpha_extremes(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    np.testing.assert_allclose(plot.overlay(images_nhwc, maps, alpha=0.0), images_nhwc, atol=1e-7)
    heat = plot.overlay(images_nhwc, maps, alpha=1.0, cmap="gray")
    assert np.all(heat[:, 2, 7] == 1.0)  # the peak is white in gray
    assert np.all(heat[:, 0, 0] == 0.0)  # everything else is the map's minimum


def test_overlay_single_image_in_both_layouts(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    hwc = plot.overlay(images_nhwc[0], maps[0])
    chw = plot.overlay(images_nhwc[0].transpose(2, 0, 1), maps[0])
    assert hwc.shape == (8, 10, 3)
    np.testing.assert_allclose(hwc, chw)


def test_overlay_explicit_layout_for_ambiguous_arrays() -> None:
    # (N, 3, 4, 3): both axis 1 and axis -1 could be channels.
    rng = np.random.default_rng(1)
    images = rng.random((2, 3, 4, 3), dtype=np.float32)
    out_first = plot.overlay(images, rng.random((2, 4, 3)), channels_first=True)
    out_last = plot.overlay(images, rng.random((2, 3, 4)), channels_first=False)
    assert out_first.shape == (2, 4, 3, 3)
    assert out_last.shape == (2, 3, 4, 3)


def test_overlay_native_tensors(torch: Any, images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    reference = plot.overlay(images_nhwc, maps)
    nchw = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
    np.testing.assert_allclose(plot.overlay(nchw, torch.from_numpy(maps)), reference, atol=1e-6)


def test_overlay_tf_tensors(tf: Any, images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    reference = plot.overlay(images_nhwc, maps)
    np.testing.assert_allclose(plot.overlay(tf.constant(images_nhwc), tf.constant(maps)), reference, atol=1e-6)


def test_overlay_grayscale_normalised_inputs_and_small_maps() -> None:
    rng = np.random.default_rng(2)
    gray = rng.normal(size=(2, 16, 16)).astype(np.float32)  # outside [0, 1]: rescaled for display
    out = plot.overlay(gray, rng.random((2, 4, 4)), alpha=0.5)
    assert out.shape == (2, 16, 16, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    shown = plot.display_images(gray)
    np.testing.assert_allclose(shown[..., 0], shown[..., 2])  # gray stays gray
    assert shown.min() == 0.0 and shown.max() == 1.0


def test_overlay_per_channel_maps_are_averaged(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    per_channel = np.repeat(maps[..., None], 3, axis=-1) * np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(plot.overlay(images_nhwc, per_channel), plot.overlay(images_nhwc, maps), atol=1e-6)


def test_overlay_errors(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    with pytest.raises(ParameterError, match="alpha"):
        plot.overlay(images_nhwc, maps, alpha=1.5)
    with pytest.raises(InputError, match="3 images but 2 maps"):
        plot.overlay(images_nhwc, maps[:2])
    with pytest.raises(InputError, match="channels"):
        plot.overlay(np.zeros((2, 5, 8, 8)), np.zeros((2, 8, 8)), channels_first=True)
    with pytest.raises(ParameterError, match="unknown matplotlib colormap"):
        plot.overlay(images_nhwc, maps, cmap="no-such-map")


def test_builtin_colormap_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    values = np.linspace(0.0, 1.0, 101)
    reference = np.asarray(matplotlib.colormaps["jet"](values))[:, :3]
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    builtin = plot.colormap("jet")
    np.testing.assert_allclose(builtin(np.array([0.0, 1.0])), [[0, 0, 0.5], [0.5, 0, 0]])
    # The built-in jet is matplotlib's segment data: the same colours (up to its 256-entry LUT).
    assert np.abs(builtin(values) - reference).max() < 0.02
    with pytest.raises(ParameterError, match="needs matplotlib"):
        plot.colormap("viridis")


def test_grid_figure_layout(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    from matplotlib.figure import Figure

    fig = plot.grid(images_nhwc, {"a": maps, "b": -maps}, image_titles=["x", "y", "z"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 3  # input + 2 methods per row
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "a", "b"]
    assert [fig.axes[3 * r].get_ylabel() for r in range(3)] == ["x", "y", "z"]
    fig = plot.grid(images_nhwc, {"a": maps}, titles=["Method A"], show_input=False, max_images=2)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "Method A"
    fig.savefig(__import__("io").BytesIO(), format="png")  # renders with Agg


def test_grid_native_layout(torch: Any, images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    nchw = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
    fig = plot.grid(nchw, {"a": torch.from_numpy(maps)})
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), images_nhwc[0], atol=1e-6)


def test_grid_errors(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    with pytest.raises(ParameterError, match="empty"):
        plot.grid(images_nhwc, {})
    with pytest.raises(ParameterError, match="titles"):
        plot.grid(images_nhwc, {"a": maps}, titles=["x", "y"])
    with pytest.raises(InputError, match="2 maps for 3 images"):
        plot.grid(images_nhwc, {"a": maps[:2]})


def _curve_result(name: str, curves: np.ndarray) -> MetricResult:
    return MetricResult(
        name, curves.mean(axis=1), higher_is_better=name == "insertion", curves=curves,
        details={"fractions": np.linspace(0, 1, curves.shape[1])},
    )


def test_curves_figure() -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(3)
    a = _curve_result("deletion", rng.random((4, 6)))
    b = _curve_result("deletion", rng.random((4, 6)))
    fig = plot.curves({"rise": a, "gradcam": b})
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), a.curves.mean(axis=0))
    np.testing.assert_allclose(ax.lines[0].get_xdata(), np.linspace(0, 1, 6))
    assert ax.get_title() == "deletion"
    assert "rise" in ax.get_legend().get_texts()[0].get_text()
    single = plot.curves(a, individual=True, title="one")
    assert len(single.axes[0].lines) == 1 + 4 and single.axes[0].get_title() == "one"


def test_curves_rejects_results_without_curves() -> None:
    flat = MetricResult("pointing_game", np.ones(3), higher_is_better=True)
    with pytest.raises(ParameterError, match="no curves"):
        plot.curves({"gradcam": flat})
