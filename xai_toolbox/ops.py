"""Tensor operations EagerPy lacks, written once for every framework.

Resizing and blurring are separable linear maps, so we apply them as two small matrix
products ``W_h @ X @ W_w^T``. The matrices are built in NumPy from one definition and cached
per device, which makes nearest/bilinear/bicubic identical across PyTorch and TensorFlow (their
native resize kernels disagree on bicubic coefficients and nearest rounding) and differentiable
wherever matmul is.

Conventions: half-pixel centres (``align_corners=False``), edge samples clamped (replicate),
bicubic with Keys' ``a = -0.5`` (TensorFlow's and PIL's choice).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

import eagerpy as ep
import numpy as np

from .backends.adapter import is_tracing

ResizeMode = Literal["nearest", "bilinear", "bicubic"]
_MODES = ("nearest", "bilinear", "bicubic")


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    w = np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, 0.0)
    return np.where((t > 1) & (t < 2), a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, w)


@functools.lru_cache(maxsize=256)
def interpolation_matrix(n_in: int, n_out: int, mode: ResizeMode) -> np.ndarray:
    """``(n_out, n_in)`` float32 matrix that resamples a 1-D signal of length ``n_in``.

    Example:
        >>> interpolation_matrix(2, 4, "nearest")
        array([[1., 0.],
               [1., 0.],
               [0., 1.],
               [0., 1.]], dtype=float32)
    """
    if mode not in _MODES:
        raise ValueError(f"resize mode must be one of {_MODES}, got {mode!r}")
    centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # source coordinate of each output
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        src = np.clip(np.floor(centre + 0.5), 0, n_in - 1).astype(int)
        m[rows, src] = 1.0
    else:
        lo = np.floor(centre).astype(int)
        offsets = (0, 1) if mode == "bilinear" else (-1, 0, 1, 2)
        for off in offsets:
            idx = lo + off
            dist = centre - idx
            w = np.maximum(0.0, 1.0 - np.abs(dist)) if mode == "bilinear" else _cubic(dist)
            np.add.at(m, (rows, np.clip(idx, 0, n_in - 1)), w)
    return m.astype(np.float32)


@functools.lru_cache(maxsize=64)
def gaussian_matrix(n: int, ksize: int, sigma: float) -> np.ndarray:
    """``(n, n)`` matrix of a 1-D Gaussian blur with zero padding (RISE's ``conv2d`` substrate)."""
    half = ksize // 2
    taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    taps /= taps.sum()
    m = np.zeros((n, n), dtype=np.float64)
    for k, w in zip(range(-half, half + 1), taps, strict=True):
        m += w * np.eye(n, k=k)
    return m.astype(np.float32)


@functools.lru_cache(maxsize=64)
def box_matrix(n: int, size: int) -> np.ndarray:
    """``(n, n)`` matrix of a 1-D box (mean) filter with replicated edges."""
    m = np.zeros((n, n), dtype=np.float64)
    start = -(size // 2)
    for i in range(n):
        for k in range(start, start + size):
            m[i, min(max(i + k, 0), n - 1)] += 1.0 / size
    return m.astype(np.float32)


#: Bytes of device constants kept between calls, all devices together: resize matrices, RISE's
#: crop tables, ... A constant larger than a quarter of it is held for its call only.
DEVICE_CACHE_BYTES = 16 * 2**20
_DEVICE_CACHE_ENTRIES = 512

# Kept between calls: least recently used first, bounded by bytes and by entries.
_device_cache: OrderedDict[tuple[object, ...], ep.Tensor] = OrderedDict()
_device_cache_sizes: dict[tuple[object, ...], int] = {}
_cache_lock = threading.Lock()
# Held for the current method or metric call (see constants_scope), whatever their size.
_call_constants: ContextVar[dict[tuple[object, ...], ep.Tensor] | None] = ContextVar(
    "xai_toolbox_constants", default=None
)


@contextlib.contextmanager
def constants_scope() -> Iterator[None]:
    """Scope of one method or metric call for :func:`on_device`: the constants uploaded inside
    are held until the scope ends (every chunk reuses them), then only those that fit the
    bounded cache kept between calls (:data:`DEVICE_CACHE_BYTES`) stay on the device. The base
    classes open it around every call; nested scopes share the outer one.

    Example:
        >>> with constants_scope():
        ...     table = on_device(x, ("my-table", h), build_table(h))    # held for the scope
    """
    if _call_constants.get() is not None:
        yield
        return
    token = _call_constants.set({})
    try:
        yield
    finally:
        _call_constants.reset(token)


def device_cache_bytes() -> int:
    """Bytes held by the device constants kept between calls (at most :data:`DEVICE_CACHE_BYTES`).

    Example:
        >>> device_cache_bytes() <= DEVICE_CACHE_BYTES
        True
    """
    with _cache_lock:
        return sum(_device_cache_sizes.values())


def on_device(like: ep.Tensor, key: tuple[object, ...], array: np.ndarray) -> ep.Tensor:
    """``array`` as a tensor beside ``like``, cached so hot loops never copy it again.

    ``key`` must identify ``array``'s content (it is not hashed). Inside a method or metric
    call the constant is held until the call ends; between calls the cache is bounded by
    :data:`DEVICE_CACHE_BYTES` (least recently used constants go first), so calls over many
    image sizes cannot pile up device memory.

    While an adapter traces a built pass (see :func:`~xai_toolbox.extend.tracing`), the
    constant is made for the trace, where it becomes part of the compiled graph, and not cached.

    Example:
        >>> table = on_device(x, ("my-method-table", h, w), build_table(h, w))
    """
    if is_tracing():  # a traced tensor belongs to its graph: never cache it for later calls
        return ep.from_numpy(like, array)
    device = getattr(like.raw, "device", None)
    full = (type(like).__name__, str(device), *key)
    held = _call_constants.get()
    if held is not None and full in held:
        return held[full]
    with _cache_lock:
        cached = _device_cache.get(full)
        if cached is not None:
            _device_cache.move_to_end(full)
    if cached is None:
        cached = ep.from_numpy(like, array)
        _keep(full, cached, int(array.nbytes))
    if held is not None:
        held[full] = cached
    return cached


def _keep(key: tuple[object, ...], tensor: ep.Tensor, nbytes: int) -> None:
    """Put ``tensor`` in the cache kept between calls, evicting the least recently used."""
    if nbytes > DEVICE_CACHE_BYTES // 4:
        return
    with _cache_lock:
        if key in _device_cache:
            return
        _device_cache[key] = tensor
        _device_cache_sizes[key] = nbytes
        total = sum(_device_cache_sizes.values())
        while _device_cache and (total > DEVICE_CACHE_BYTES or len(_device_cache) > _DEVICE_CACHE_ENTRIES):
            oldest, _ = _device_cache.popitem(last=False)
            total -= _device_cache_sizes.pop(oldest)


def matmul(a: ep.Tensor, b: ep.Tensor) -> ep.Tensor:
    """Batched, broadcasting matrix product (EagerPy's ``@`` accepts 2-D operands only).

    Example:
        >>> matmul(ep.astensor(np.ones((5, 2, 3))), ep.astensor(np.ones((3, 4)))).shape
        (5, 2, 4)
    """
    return type(a)(a.raw @ b.raw)


def resize(x: ep.Tensor, size: tuple[int, int], mode: ResizeMode = "bilinear") -> ep.Tensor:
    """Resize the last two axes of ``x`` (``(..., h, w)``) to ``size`` = ``(H, W)``: the same
    numbers in every framework (half-pixel centres, replicated edges, bicubic ``a = -0.5``).

    Example:
        >>> resize(cams, (224, 224), "bilinear")         # (N, 7, 7) -> (N, 224, 224)
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    wh = on_device(x, ("resize", h, size[0], mode), interpolation_matrix(h, size[0], mode))
    ww = on_device(x, ("resize-T", w, size[1], mode), interpolation_matrix(w, size[1], mode).T.copy())
    return matmul(matmul(wh, x), ww)


def spatial_filter(x: ep.Tensor, mh: ep.Tensor, mw: ep.Tensor, channel_axis: int) -> ep.Tensor:
    """Apply ``mh`` to rows and ``mw`` to columns of images ``(N, C, H, W)`` or ``(N, H, W, C)``.

    Example:
        >>> mh = on_device(x, ("box", h, 5), box_matrix(h, 5))
        >>> blurred = spatial_filter(x, mh, mw, adapter.channel_axis)
    """
    if channel_axis in (-1, x.ndim - 1):
        x = x.transpose((0, 3, 1, 2))
        return matmul(matmul(mh, x), mw.T).transpose((0, 2, 3, 1))
    return matmul(matmul(mh, x), mw.T)


def gaussian_blur(x: ep.Tensor, channel_axis: int, ksize: int = 11, sigma: float = 5.0) -> ep.Tensor:
    """Gaussian blur of a batch of images (zero padding), RISE's insertion substrate.

    Example:
        >>> substrate = gaussian_blur(x, adapter.channel_axis, ksize=11, sigma=5.0)
    """
    h, w = _spatial_shape(x, channel_axis)
    mh = on_device(x, ("gauss", h, ksize, sigma), gaussian_matrix(h, ksize, sigma))
    mw = on_device(x, ("gauss", w, ksize, sigma), gaussian_matrix(w, ksize, sigma))
    return spatial_filter(x, mh, mw, channel_axis)


def box_blur(x: ep.Tensor, channel_axis: int, size: int = 10) -> ep.Tensor:
    """Box (mean) blur of a batch of images with replicated edges (Sobol's ``blurring``).

    Example:
        >>> reference = box_blur(x, adapter.channel_axis, size=10)
    """
    h, w = _spatial_shape(x, channel_axis)
    mh = on_device(x, ("box", h, size), box_matrix(h, size))
    mw = on_device(x, ("box", w, size), box_matrix(w, size))
    return spatial_filter(x, mh, mw, channel_axis)


def _spatial_shape(x: ep.Tensor, channel_axis: int) -> tuple[int, int]:
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (rank 4), got shape {x.shape}")
    return (x.shape[2], x.shape[3]) if channel_axis == 1 else (x.shape[1], x.shape[2])


def expand_to_inputs(maps: ep.Tensor, inputs_ndim: int, channel_axis: int) -> ep.Tensor:
    """Insert the channel axis into per-position maps so they broadcast against the inputs.

    Example:
        >>> masked = x * expand_to_inputs(masks, x.ndim, adapter.channel_axis)   # masks (N, H, W)
    """
    if maps.ndim == inputs_ndim:
        return maps
    return maps.expand_dims(1 if channel_axis == 1 else maps.ndim)


def reduce_channels(x: ep.Tensor, channel_axis: int, how: str = "sum") -> ep.Tensor:
    """Reduce the channel axis of rank-3/4 inputs (``"sum"``, ``"mean"``, ``"max"``); rank-2
    (tabular) inputs are returned as they are.

    Example:
        >>> saliency = reduce_channels(grads.abs(), adapter.channel_axis, "max")   # (N, H, W)
    """
    if x.ndim <= 2:
        return x
    axis = 1 if channel_axis == 1 else x.ndim - 1
    if how == "sum":
        return x.sum(axis=axis)
    if how == "mean":
        return x.mean(axis=axis)
    if how == "max":
        return x.max(axis=axis)
    raise ValueError(f"unknown channel reduction {how!r}")


def normalize_per_item(x: ep.Tensor, eps: float = 1e-12) -> ep.Tensor:
    """Min-max normalise each item of a batch to [0, 1] (constant items become 0).

    Example:
        >>> normalize_per_item(ep.astensor(np.array([[1.0, 3.0]]))).numpy()
        array([[0., 1.]])
    """
    flat = x.reshape((x.shape[0], -1))
    lo = flat.min(axis=1, keepdims=True)
    hi = flat.max(axis=1, keepdims=True)
    return ((flat - lo) / (hi - lo + eps)).reshape(x.shape)


#: Accepted output activations of metrics: scores as the model gives them, or probabilities.
ACTIVATIONS = (None, "softmax", "sigmoid")


def activate(outputs: ep.Tensor, activation: str | None) -> ep.Tensor:
    """Apply an output activation (``None``, ``"softmax"``, ``"sigmoid"``) before a score.

    Example:
        >>> activate(ep.astensor(np.zeros((1, 2))), "softmax").numpy()
        array([[0.5, 0.5]])
    """
    if activation is None:
        return outputs
    if activation == "softmax":
        return ep.softmax(outputs, axis=-1)
    if activation != "sigmoid":
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    # EagerPy has no sigmoid; 1 / (1 + e^-z) saturates to exactly 0 or 1 without NaN.
    return 1.0 / (1.0 + ep.exp(-outputs))


def channels_first(a: ep.Tensor, channel_axis: int) -> ep.Tensor:
    """Activations or images ``(N, K, h, w)`` whatever the framework's layout.

    Example:
        >>> channels_first(acts, adapter.channel_axis)      # (N, h, w, K) -> (N, K, h, w)
    """
    return a if channel_axis == 1 else a.transpose((0, 3, 1, 2))
