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
    out = plot.overlay(images_nhwc, maps, alpha=0.25, cmap="jet", fade=False, background="color",
                       clip_percentile=0)
    assert out.shape == (3, 8, 10, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Independent reference: non-negative maps scaled to their maximum, blended with jet.
    jet = plot.colormap("jet")
    expected = 0.75 * images_nhwc + 0.25 * jet(maps / 5.0)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_overlay_alpha_extremes(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    plain = plot.overlay(images_nhwc, maps, alpha=0.0, background="color")
    np.testing.assert_allclose(plain, images_nhwc, atol=1e-7)
    heat = plot.overlay(images_nhwc, maps, alpha=1.0, cmap="gray", fade=False)
    assert np.all(heat[:, 2, 7] == 1.0)  # the peak is white in gray
    assert np.all(heat[:, 0, 0] == 0.0)  # everything else is the map's minimum


def test_overlay_fade_shows_the_image_where_the_map_is_zero(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    out = plot.overlay(images_nhwc, maps, alpha=0.8, background="color")
    zero = maps == 0
    np.testing.assert_allclose(out[zero], images_nhwc[zero], atol=1e-6)
    # At the peak (the end of the scale) the colour has the full alpha: 0.2 image + 0.8 yellow.
    top = plot.colormap(plot.SEQUENTIAL_CMAP)(np.array(1.0))
    np.testing.assert_allclose(out[:, 2, 7], 0.2 * images_nhwc[:, 2, 7] + 0.8 * top, atol=1e-6)
    grey = plot.overlay(images_nhwc, maps, alpha=0.0)  # the default background: the image in grey
    np.testing.assert_allclose(grey[..., 0], grey[..., 2])
    luma = images_nhwc @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(grey[..., 1], 0.2 + 0.6 * luma, atol=1e-6)


def test_signed_maps_are_centred_on_zero() -> None:
    """Gradient×Input-like maps: half negative. Zero must not look important: with fade it
    shows the image; without, the diverging colormap's white centre, not cyan."""
    rng = np.random.default_rng(5)
    images = np.full((1, 4, 4, 3), 0.5, np.float32)
    m = np.zeros((1, 4, 4), np.float32)
    m[0, 0, 0], m[0, 3, 3] = 2.0, -2.0
    m[0, 1] = rng.normal(scale=0.01, size=4)  # tiny values either side of zero
    assert plot.auto_sign(m) == "all"
    out = plot.overlay(images, m, alpha=1.0, clip_percentile=0, background="color")
    red, blue = out[0, 0, 0], out[0, 3, 3]
    assert red[0] > 0.3 and red[0] > 2 * red[2]  # positive: red
    assert blue[2] > 0.3 and blue[2] > 2 * blue[0]  # negative: blue
    np.testing.assert_allclose(out[0, 2, 2], 0.5, atol=1e-6)  # exactly zero: the image
    flat = plot.overlay(images, m, alpha=1.0, clip_percentile=0, fade=False, background="color")
    centre = plot.colormap(plot.DIVERGING_CMAP)(np.array(0.5))
    np.testing.assert_allclose(flat[0, 2, 2], centre, atol=1e-6)
    assert centre.min() > 0.9  # white-ish, nothing like jet's cyan (0, 1, 1) at zero


def test_map_scale_signs_and_percentile_clipping() -> None:
    rng = np.random.default_rng(6)
    m = rng.normal(size=(3, 20, 20)).astype(np.float32)
    for sign, shown in (("all", np.abs(m)), ("positive", np.maximum(m, 0)),
                        ("negative", np.maximum(-m, 0)), ("absolute", np.abs(m))):
        scale = plot.map_scale(m, sign=sign, clip_percentile=2.0)
        expected = np.percentile(shown.reshape(3, -1), 98.0, axis=1, method="lower")  # reference
        np.testing.assert_allclose(scale.bounds, expected, rtol=1e-6)
        values = scale.normalize(m)
        assert values.min() >= (-1.0 if sign == "all" else 0.0) and values.max() <= 1.0
        # About 2 % of the shown values saturate (percentile clipping), not just the maximum.
        saturated = np.mean(np.abs(values) >= 1.0 - 1e-6)
        assert 0.005 < saturated < 0.05 if sign != "negative" else saturated > 0
    assert plot.map_scale(m).sign == "all"
    assert plot.map_scale(np.abs(m)).sign == "positive"
    assert plot.map_scale(m, sign="negative").tick_labels() == ("0", "−s")
    shared = plot.map_scale(m, shared=True, clip_percentile=0)
    np.testing.assert_allclose(shared.bounds, np.abs(m).max())
    assert shared.tick_labels()[2] == f"+{np.abs(m).max():.3g}"
    assert "diverging" in plot.map_scale(m).describe()


def test_map_scale_of_sparse_and_constant_maps() -> None:
    sparse = np.zeros((2, 10, 10), np.float32)
    sparse[0, 0, 0] = 3.0  # the 99.5th percentile is 0: scale to the peak instead
    scale = plot.map_scale(sparse)
    np.testing.assert_allclose(scale.bounds, [3.0, 0.0])
    assert np.all(scale.normalize(sparse)[1] == 0.0)  # an all-zero map shows nothing, no NaN
    with pytest.raises(ParameterError, match="sign must be one of"):
        plot.map_scale(sparse, sign="both")
    with pytest.raises(ParameterError, match="clip_percentile"):
        plot.map_scale(sparse, clip_percentile=100)
    with pytest.raises(ParameterError, match="background"):
        plot.overlay(np.zeros((2, 10, 10, 3)), sparse, background="white")


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
    # The defaults work without matplotlib too, close to matplotlib's tables.
    for name, tolerance in (("viridis", 0.025), ("RdBu_r", 0.02)):
        table = np.asarray(matplotlib.colormaps[name](values))[:, :3]
        assert np.abs(plot.colormap(name)(values) - table).max() < tolerance, name
    assert plot.overlay(np.zeros((1, 4, 4, 3)), np.ones((1, 4, 4))).shape == (1, 4, 4, 3)
    with pytest.raises(ParameterError, match="needs matplotlib"):
        plot.colormap("magma")


def test_grid_figure_layout(images_nhwc: np.ndarray, maps: np.ndarray) -> None:
    from matplotlib.figure import Figure

    signed = maps - maps[:, :1, :1] * 0.5 + np.linspace(-1, 1, 10, dtype=np.float32)
    fig = plot.grid(images_nhwc, {"a": maps, "b": signed}, image_titles=["x", "y", "z"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 3 + 3  # input + 2 methods per row, then a row of colourbars
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "a", "b"]
    assert [fig.axes[3 * r].get_ylabel() for r in range(3)] == ["x", "y", "z"]
    bars = fig.axes[9:]
    assert not bars[0].axison  # no colourbar under the inputs
    assert [t.get_text() for t in bars[1].get_xticklabels()] == ["0", "s"]
    assert [t.get_text() for t in bars[2].get_xticklabels()] == ["−s", "0", "+s"]
    fig = plot.grid(images_nhwc, {"a": maps}, titles=["Method A"], show_input=False, max_images=2,
                    colorbar=False)
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
    assert ax.get_xlabel().startswith("fraction of pixels removed") and ax.get_ylabel() == "model score"
    # The band: the 95 % interval of the mean curve, NumPy reference.
    mean, low, high = plot.curve_band(a)
    half = 1.959964 * a.curves.std(axis=0, ddof=1) / 2.0
    np.testing.assert_allclose(high - mean, half, rtol=1e-5)
    np.testing.assert_allclose(low, mean - half, rtol=1e-5)
    assert len(ax.collections) == 2  # one band per method


def test_curves_colours_are_distinct_and_small_scores_not_flattened() -> None:
    rng = np.random.default_rng(7)
    results = {f"m{i}": _curve_result("deletion", 0.01 * rng.random((3, 6))) for i in range(25)}
    fig = plot.curves(results)
    ax = fig.axes[0]
    styles = {(matplotlib.colors.to_hex(line.get_color()), str(line.get_linestyle())) for line in ax.lines}
    assert len(styles) == 25
    assert len(set(plot.palette(40))) == 40
    assert ax.get_ylim()[1] < 0.05  # the y range follows the data, not [0, 1]
    softmax = MetricResult("insertion", np.ones(2), True, curves=np.ones((2, 3)),
                           details={"activation": "softmax"})
    assert plot.curve_labels(softmax) == ("fraction of pixels inserted (most relevant first)",
                                          "class probability")


def test_curves_rejects_results_without_curves() -> None:
    flat = MetricResult("pointing_game", np.ones(3), higher_is_better=True)
    with pytest.raises(ParameterError, match="no curves"):
        plot.curves({"gradcam": flat})


def test_scores_figure_orders_best_first_with_intervals() -> None:
    rng = np.random.default_rng(8)
    results = {m: MetricResult("deletion", rng.random(10) * k, higher_is_better=False)
               for m, k in (("a", 3.0), ("b", 1.0), ("c", 2.0))}
    fig = plot.scores(results)
    ax = fig.axes[0]
    order = [t.get_text() for t in ax.get_yticklabels()]
    assert order == sorted(results, key=lambda m: results[m].mean)  # lower is better: smallest first
    whiskers = [line for line in ax.lines if len(line.get_xdata()) == 2]
    for line, method in zip(whiskers, order, strict=True):
        np.testing.assert_allclose(line.get_xdata(), results[method].ci)
    assert "lower is better" in ax.get_xlabel() and ax.get_title() == "deletion ↓"
    with pytest.raises(ParameterError, match="no results"):
        plot.scores({})
