"""Gaussian noise for (item, sample) pairs, independent of chunking: SmoothGrad and its kin.

Two sources with one interface, ``scaled(chunk, sigma)``: the noise of a chunk's pairs times
each item's ``sigma``, shaped ``(chunk.size, *item_shape)`` on the device of the images.

* :class:`HostNoise` draws on the host with NumPy, item ``i`` from
  ``default_rng([seed, i])``, in a channels-first order transposed for channels-last
  frameworks: one seed gives the same noise in every framework and for every ``batch_size``.
* :class:`DeviceNoise` draws on the model's device with the framework's own generator
  (:meth:`~xai_toolbox.extend.ModelAdapter.random_normal`), seeded per item: no full-size
  host-to-device copy per chunk (what matters on a GPU), still independent of ``batch_size``,
  but each framework draws its own noise.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np

from ._streaming import Chunk
from .backends import ModelAdapter
from .backends.adapter import item_seed, standard_normal


class HostNoise:
    """Standard normal noise for (item, sample) pairs, drawn on the host (see module docs).

    Args:
        adapter: the model's adapter (uploads, layout).
        like: a tensor on the target device (the images).
        seed: ``None`` for fresh noise.
        n: samples per item.
        shape: the shape of one item, in the framework's layout.

    Example:
        >>> noise = HostNoise(adapter, x, seed=0, n=50, shape=tuple(x.shape[1:]))
        >>> noisy = adapter.take_rows(x, chunk.items) + noise.scaled(chunk, sigma)
    """

    def __init__(self, adapter: ModelAdapter, like: ep.Tensor, seed: int | None, n: int, shape: tuple[int, ...]) -> None:
        self.adapter, self.like, self.seed, self.n, self.shape = adapter, like, seed, n, shape
        self._item: int | None = None
        self._noise: np.ndarray | None = None

    def _for_item(self, item: int) -> np.ndarray:
        if self._item != item:
            rng = np.random.default_rng(None if self.seed is None else [self.seed, item])
            canonical = self.shape
            channels_last = self.adapter.channel_axis == -1 and len(self.shape) >= 2
            if channels_last:
                canonical = (self.shape[-1], *self.shape[:-1])
            noise = standard_normal(rng, (self.n, *canonical))
            if channels_last:
                noise = np.moveaxis(noise, 1, -1)
            self._item, self._noise = item, noise
        assert self._noise is not None
        return self._noise

    def scaled(self, chunk: Chunk, sigma: Any) -> ep.Tensor:
        """The noise of the chunk's pairs times each item's ``sigma`` (NumPy ``(n_items,)``:
        read it from the device once per call, not per chunk), written straight into one
        float32 array slice by slice (a chunk holds few items)."""
        out = np.empty((chunk.size, *self.shape), dtype=np.float32)
        for item, lo, hi in chunk.runs():
            first = (chunk.start + lo) % self.n
            np.multiply(self._for_item(item)[first : first + hi - lo], np.float32(sigma[item]), out=out[lo:hi])
        return self.adapter.from_numpy(self.like, out)


class DeviceNoise:
    """Standard normal noise drawn on the device with the framework's generator.

    Item ``i`` draws all its samples at once, seeded with ``item_seed(seed, i)``, so the noise
    does not depend on ``batch_size``; only one item's noise is kept at a time.

    Example:
        >>> noise = DeviceNoise(adapter, x, seed=0, n=50, shape=tuple(x.shape[1:]))
    """

    def __init__(self, adapter: ModelAdapter, like: ep.Tensor, seed: int | None, n: int, shape: tuple[int, ...]) -> None:
        self.adapter, self.like, self.seed, self.n, self.shape = adapter, like, seed, n, shape
        self._item: int | None = None
        self._noise: ep.Tensor | None = None

    def _for_item(self, item: int) -> ep.Tensor:
        if self._item != item:
            seed = None if self.seed is None else item_seed(self.seed, item)
            self._item, self._noise = item, self.adapter.random_normal(self.like, (self.n, *self.shape), seed)
        assert self._noise is not None
        return self._noise

    def scaled(self, chunk: Chunk, sigma: Any) -> ep.Tensor:
        """The noise of the chunk's pairs times each item's ``sigma`` (a device tensor)."""
        parts = []
        for item, lo, hi in chunk.runs():
            first = (chunk.start + lo) % self.n
            parts.append(self._for_item(item)[first : first + hi - lo] * sigma[item])
        return parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)


def noise_source(kind: str, adapter: ModelAdapter, like: ep.Tensor, seed: int | None, n: int) -> HostNoise | DeviceNoise:
    """``"host"`` → :class:`HostNoise`, ``"device"`` → :class:`DeviceNoise`, for items shaped
    like the rows of ``like``.

    Example:
        >>> noise = noise_source("host", adapter, x, seed=0, n=50)
    """
    cls = {"host": HostNoise, "device": DeviceNoise}.get(kind)
    if cls is None:
        raise ValueError(f"noise source must be 'host' or 'device', got {kind!r}")
    return cls(adapter, like, seed, n, tuple(like.shape[1:]))
