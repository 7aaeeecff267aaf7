"""Streaming many model inputs through the model in chunks of ``batch_size``.

A perturbation method asks for ``n_per_item`` model inputs for each of ``n_items`` images.
We enumerate the ``n_items * n_per_item`` (image, sample) pairs in order and cut them into
chunks of ``batch_size`` regardless of image boundaries, so every forward pass is full and
peak memory depends on ``batch_size`` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import eagerpy as ep
import numpy as np

from .backends import ModelAdapter

T = TypeVar("T")


@dataclass(frozen=True)
class Chunk:
    """A contiguous range ``[start, stop)`` of (item, sample) pairs."""

    start: int
    stop: int
    n_per_item: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def items(self) -> np.ndarray:
        """Item (image) index of each pair."""
        return np.arange(self.start, self.stop) // self.n_per_item

    @property
    def samples(self) -> np.ndarray:
        """Sample index (within its item) of each pair."""
        return np.arange(self.start, self.stop) % self.n_per_item

    def runs(self) -> Iterator[tuple[int, int, int]]:
        """``(item, lo, hi)``: the positions ``[lo, hi)`` of this chunk that belong to ``item``."""
        pos = self.start
        while pos < self.stop:
            item = pos // self.n_per_item
            end = min(self.stop, (item + 1) * self.n_per_item)
            yield item, pos - self.start, end - self.start
            pos = end


def chunks(n_items: int, n_per_item: int, batch_size: int) -> list[Chunk]:
    total = n_items * n_per_item
    return [
        Chunk(start, min(start + batch_size, total), n_per_item)
        for start in range(0, total, batch_size)
    ]


def _writable(t: ep.Tensor) -> bool:
    """Whether ``t``'s framework has mutable arrays to accumulate into (PyTorch, NumPy)."""
    return type(t).__name__ in ("PyTorchTensor", "NumPyTensor")


class ItemSums:
    """Per-item sums of per-pair values, accumulated chunk by chunk on the device.

    PyTorch and NumPy sums are added in place into one ``(n_items, ...)`` buffer: a fresh sum
    tensor per item and chunk would leave small live blocks between the large ones each chunk
    frees, which glibc cannot reuse (see :class:`PairScores`). Other frameworks' tensors are
    immutable and are summed functionally.
    """

    def __init__(self, n_items: int) -> None:
        self._sums: list[ep.Tensor | None] = [None] * n_items
        self._buffer: Any = None
        self._added = np.zeros(n_items, dtype=bool)

    def add(self, chunk: Chunk, values: ep.Tensor) -> None:
        writable = _writable(values)
        for item, lo, hi in chunk.runs():
            part = values[lo:hi].sum(axis=0)
            if writable:
                if self._buffer is None:
                    self._buffer = ep.zeros(part, (len(self._sums), *part.shape)).raw
                self._buffer[item] += part.raw
            else:
                current = self._sums[item]
                self._sums[item] = part if current is None else current + part
            self._added[item] = True

    def result(self) -> ep.Tensor:
        missing = np.flatnonzero(~self._added).tolist()
        if missing:
            raise RuntimeError(f"no values were added for items {missing}")
        if self._buffer is not None:
            return ep.astensor(self._buffer)
        return ep.stack(self._sums, axis=0)  # type: ignore[arg-type]


class PairScores:
    """One value per (item, sample) pair, written chunk by chunk into a buffer allocated once.

    Why not a list of per-chunk tensors concatenated at the end: each chunk frees megabytes of
    perturbed inputs and activations, and a small tensor kept alive from every chunk lands in
    those holes. glibc then cannot reuse them for the next chunk's large blocks, and the
    process grows by about one chunk of inputs per chunk (2 GB of RSS for Sobol on 8 images of
    64x64 instead of 0.35 GB). PyTorch and NumPy values are written in place into one buffer on
    the values' device (no host synchronisation); other tensors (TensorFlow's have their own
    allocator) are gathered and concatenated.

    Example:
        >>> scores = PairScores(n_items=2, n_per_item=3)
        >>> for chunk in chunks(2, 3, batch_size=4):
        ...     scores.put(chunk, values_of(chunk))   # (chunk.size,) or (chunk.size, ...)
        >>> scores.result().shape                      # (2, 3)
    """

    def __init__(self, n_items: int, n_per_item: int) -> None:
        self.n_items, self.n_per_item = n_items, n_per_item
        self._buffer: Any = None
        self._parts: list[ep.Tensor] = []
        self._filled = 0

    def put(self, chunk: Chunk, values: ep.Tensor) -> None:
        if values.shape[0] != chunk.size:
            raise ValueError(f"{values.shape[0]} values for a chunk of {chunk.size} pairs")
        if chunk.start != self._filled:
            raise ValueError(f"chunks must come in order: expected start {self._filled}, got {chunk.start}")
        self._filled = chunk.stop
        if not _writable(values):
            self._parts.append(values)
            return
        if self._buffer is None:
            self._buffer = ep.zeros(values, (self.n_items * self.n_per_item, *values.shape[1:])).raw
        raw = values.raw
        self._buffer[chunk.start : chunk.stop] = raw.detach() if hasattr(raw, "detach") else raw

    def result(self) -> ep.Tensor:
        """The values, shaped ``(n_items, n_per_item, ...)``."""
        total = self.n_items * self.n_per_item
        if self._filled != total:
            raise RuntimeError(f"{self._filled} of {total} pair values were put")
        if self._buffer is not None:
            joined = ep.astensor(self._buffer)
        else:
            joined = self._parts[0] if len(self._parts) == 1 else ep.concatenate(self._parts, axis=0)
        return joined.reshape((self.n_items, self.n_per_item, *joined.shape[1:]))


def upload(like: ep.Tensor, array: np.ndarray) -> ep.Tensor:
    """A small host array (indices, low-resolution masks) as a tensor beside ``like``.

    On a CUDA device, ``ep.from_numpy`` makes a blocking copy, and a blocking host-to-device
    copy in PyTorch synchronises the stream: inside a chunk loop the host would wait for the
    previous chunk's forward pass before queueing the next one. Here the array is staged in
    pinned memory and copied asynchronously instead (PyTorch's caching host allocator keeps
    the staging buffer until the copy has run). Everywhere else this is ``ep.from_numpy``.

    Example:
        >>> idx = upload(x, np.array([0, 0, 1]))        # int64 tensor on x's device
    """
    array = np.ascontiguousarray(array)
    device = getattr(like.raw, "device", None)
    if getattr(device, "type", None) == "cuda" and type(like).__name__ == "PyTorchTensor":
        import torch

        if not array.flags.writeable:  # torch.from_numpy warns on read-only arrays
            array = array.copy()
        staged = torch.from_numpy(array).pin_memory()
        return ep.astensor(staged.to(device, non_blocking=True))
    return ep.from_numpy(like, array)


def take_rows(x: ep.Tensor, items: np.ndarray) -> ep.Tensor:
    """``x[items]`` with a NumPy index (repeats allowed), on ``x``'s device.

    The result is for reading (EagerPy operations never write in place): a chunk of
    perturbations repeats each image many times, and for PyTorch those repeats are broadcast
    views of the image rather than a gathered copy, which saves a full-size copy and an index
    upload per chunk.
    """
    step = np.diff(items)
    if len(items) and np.all(step == 1):
        return x[int(items[0]) : int(items[-1]) + 1]
    if len(items) and type(x).__name__ == "PyTorchTensor" and np.all(step >= 0):
        starts = np.flatnonzero(np.r_[True, step != 0])
        if len(starts) <= _MAX_VIEW_RUNS:
            stops = np.r_[starts[1:], len(items)]
            parts = [_repeated_row(x, int(items[a]), int(b - a)) for a, b in zip(starts, stops, strict=True)]
            return parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)
    return x[upload(x, items.astype(np.int64))]


def broadcast_rows(x: ep.Tensor, items: np.ndarray) -> ep.Tensor:
    """``x[items]`` for an element-wise product with per-pair tensors of ``len(items)`` rows.

    When every pair belongs to one item (most chunks of a method with many samples per image),
    that item's row alone, ``(1, ...)``, which broadcasts in the product: frameworks without
    broadcast views (TensorFlow) then skip a full-size gather per chunk. Otherwise
    :func:`take_rows`.
    """
    if len(items) and items[0] == items[-1] and np.all(items == items[0]):
        return x[int(items[0]) : int(items[0]) + 1]
    return take_rows(x, items)


#: Above this many runs of equal items a gather is cheaper than concatenating views.
_MAX_VIEW_RUNS = 8


def _repeated_row(x: ep.Tensor, item: int, count: int) -> ep.Tensor:
    """Row ``item`` of a PyTorch tensor repeated ``count`` times, as a broadcast view."""
    row = x.raw[item : item + 1]
    return ep.astensor(row.expand(count, *row.shape[1:]))


def batched_forward(adapter: ModelAdapter, x: ep.Tensor, batch_size: int) -> ep.Tensor:
    """Model outputs for all of ``x``, ``batch_size`` inputs per forward pass."""
    if x.shape[0] <= batch_size:
        return adapter.forward(x)
    parts = [adapter.forward(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return ep.concatenate(parts, axis=0)


def progress(iterable: Iterable[T], *, enabled: bool | None, total: int, desc: str) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar. ``enabled=None``: only on an interactive terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI") and total > 1
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


def to_numpy(t: Any) -> np.ndarray:
    """A tensor (EagerPy or native) as a NumPy array (a host copy)."""
    if isinstance(t, ep.Tensor):
        return t.numpy()
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    if hasattr(t, "numpy"):
        return np.asarray(t.numpy())
    return np.asarray(t)
