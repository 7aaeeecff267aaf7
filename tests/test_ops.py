"""Framework-independent ops against the frameworks' own kernels and SciPy."""

from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest

from xai_toolbox import ops


def _grid(n: int = 2, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w), dtype=np.float32)


@pytest.mark.parametrize("size", [(10, 14), (35, 21), (3, 4)])
def test_bilinear_matches_torch_and_tf(size: tuple[int, int], pytestconfig: pytest.Config) -> None:
    g = _grid()
    ours = ops.resize(ep.astensor(g), size, "bilinear").numpy()
    if "torch" in pytestconfig.frameworks:
        import torch

        ref = torch.nn.functional.interpolate(torch.from_numpy(g)[:, None], size=size, mode="bilinear",
                                              align_corners=False, antialias=False)[:, 0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    if "tf" in pytestconfig.frameworks:
        import tensorflow as tf

        ref = tf.image.resize(g[..., None], size, method="bilinear", antialias=False)[..., 0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_nearest_matches_integer_upsampling() -> None:
    g = _grid()
    ours = ops.resize(ep.astensor(g), (15, 21), "nearest").numpy()
    np.testing.assert_array_equal(ours, np.repeat(np.repeat(g, 3, axis=1), 3, axis=2))


def test_bicubic_is_keys_half_pixel_and_matches_tf_inside(pytestconfig: pytest.Config) -> None:
    g = _grid(h=8, w=8)
    ours = ops.resize(ep.astensor(g), (32, 32), "bicubic").numpy()
    # interpolating: constant signals stay constant, and rows of the matrix sum to 1
    np.testing.assert_allclose(ops.interpolation_matrix(8, 32, "bicubic").sum(axis=1), 1.0, atol=1e-6)
    const = ops.resize(ep.astensor(np.full((1, 8, 8), 0.3, np.float32)), (32, 32), "bicubic").numpy()
    np.testing.assert_allclose(const, 0.3, atol=1e-6)
    if "tf" in pytestconfig.frameworks:
        import tensorflow as tf

        ref = tf.image.resize(g[..., None], (32, 32), method="bicubic", antialias=False)[..., 0].numpy()
        # TF treats borders differently; away from them the Keys kernel is the same
        np.testing.assert_allclose(ours[:, 6:-6, 6:-6], ref[:, 6:-6, 6:-6], atol=1e-5)


def test_gaussian_and_box_blur_match_scipy() -> None:
    from scipy import ndimage

    x = np.random.default_rng(1).random((2, 3, 20, 24), dtype=np.float32)
    ours = ops.gaussian_blur(ep.astensor(x), channel_axis=1, ksize=11, sigma=5.0).numpy()
    taps = np.exp(-0.5 * (np.arange(-5, 6) / 5.0) ** 2)
    taps /= taps.sum()
    ref = ndimage.correlate1d(ndimage.correlate1d(x, taps, axis=2, mode="constant"), taps, axis=3, mode="constant")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    last = ops.gaussian_blur(ep.astensor(x.transpose(0, 2, 3, 1).copy()), channel_axis=-1).numpy()
    np.testing.assert_allclose(last, ref.transpose(0, 2, 3, 1), atol=1e-5)
    box = ops.box_blur(ep.astensor(x), channel_axis=1, size=3).numpy()
    ref = ndimage.uniform_filter(x, size=(1, 1, 3, 3), mode="nearest")
    np.testing.assert_allclose(box, ref, atol=1e-5)


def test_resize_is_identity_at_same_size_and_rejects_bad_mode() -> None:
    g = ep.astensor(_grid())
    assert ops.resize(g, (5, 7)) is g
    with pytest.raises(ValueError, match="resize mode"):
        ops.interpolation_matrix(3, 6, "lanczos")


def test_normalize_and_reduce() -> None:
    x = ep.astensor(np.array([[[1.0, 3.0]], [[2.0, 2.0]]], np.float32))
    np.testing.assert_allclose(ops.normalize_per_item(x).numpy(), [[[0.0, 1.0]], [[0.0, 0.0]]])
    imgs = ep.astensor(np.ones((2, 3, 4, 5), np.float32))
    assert ops.reduce_channels(imgs, 1, "sum").shape == (2, 4, 5)
    assert ops.reduce_channels(imgs, -1, "max").shape == (2, 3, 4)
    assert ops.expand_to_inputs(ep.astensor(np.ones((2, 4, 5), np.float32)), 4, 1).shape == (2, 1, 4, 5)
