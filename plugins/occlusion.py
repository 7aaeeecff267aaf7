"""Occlusion (Zeiler & Fergus, 2014), averaged over overlapping windows as Captum does.

A window of ``patch_size`` slides over the positions of the input (image pixels, all channels
together; features of a tabular row; time steps of a series) with ``stride``; each placement
sets the window to ``baseline`` and records the score drop ``f(x) − f(x_occluded)``. The
attribution of a position is the mean drop over the windows that cover it.

Placements follow Captum's ``Occlusion``: the first window sits at index 0, windows start every
``stride`` until the whole axis is covered (``ceil((n − patch) / stride) + 1`` starts), and the
last one may be cut off by the border. The windows are streamed ``batch_size`` model inputs at
a time across images; a window is built on the device from its start indices only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import ModelAdapter, PerturbationMethod, Targets, on_device


def _sizes(name: str, value: Any) -> tuple[int, ...]:
    """An int or a tuple of positive ints."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return (xe.positive_int(name, value),)
    if isinstance(value, tuple | list) and 1 <= len(value) <= 2:
        return tuple(xe.positive_int(name, item) for item in value)
    raise xt.ParameterError(f"{name} must be a positive int or a tuple of one or two positive ints, got {value!r}")


def window_table(n: int, patch: int, stride: int) -> np.ndarray:
    """``(count, n)`` 0/1 table: row ``k`` marks the positions of the ``k``-th window on an axis."""
    count = math.ceil((n - patch) / stride) + 1
    table = np.zeros((count, n), dtype=np.float32)
    for k in range(count):
        table[k, k * stride : k * stride + patch] = 1.0
    return table


class Occlusion(PerturbationMethod):
    """Occlusion sensitivity: mean score drop over the windows covering each position.

    Args:
        patch_size: window size: an int (square window / length) or ``(h, w)``.
        stride: step between windows: an int or ``(sh, sw)``; at most the window size on every
            axis the window does not span entirely (otherwise positions would be skipped).
        baseline: the value occluded positions take (0: black, or the mean colour of
            normalised images).

    The map has one value per position: images ``(N, H, W)`` (windows span all channels),
    tabular ``(N, F)``, series ``(N, T)``.

    Example:
        >>> maps = xt.Occlusion(model, patch_size=8, stride=4)(images, labels)
    """

    name = "occlusion"

    def __init__(
        self,
        model: Any,
        *,
        patch_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 3,
        baseline: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        _sizes("patch_size", patch_size)
        _sizes("stride", stride)
        self.patch_size = patch_size
        self.stride = stride
        self.baseline = xe.number("baseline", baseline)

    def _geometry(self, x: ep.Tensor) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(positions, patch, stride)`` per axis for the inputs ``x``, validated."""
        positions = xe.explanation_shape(tuple(x.shape), self.adapter.channel_axis)[1:]
        k = len(positions)
        patch, stride = _sizes("patch_size", self.patch_size), _sizes("stride", self.stride)
        if len(patch) == 1:
            patch = patch * k
        if len(stride) == 1:
            stride = stride * k
        if len(patch) != k or len(stride) != k:
            raise xt.ParameterError(
                f"patch_size={self.patch_size!r} and stride={self.stride!r} must have one value per "
                f"axis of the positions {positions} (or be ints)"
            )
        for n, p, s in zip(positions, patch, stride, strict=True):
            if p > n:
                raise xt.ParameterError(
                    f"occlusion: patch_size {patch} is larger than the input positions {positions}"
                )
            if s > p and p < n:
                raise xt.ParameterError(
                    f"occlusion: stride {stride} is larger than patch_size {patch}, which would leave "
                    "positions never occluded; use stride <= patch_size"
                )
        return positions, patch, stride

    def check_call(self, x: ep.Tensor) -> None:
        self._geometry(x)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        adapter = self.adapter
        positions, patch, stride = self._geometry(x)
        tables = [window_table(n, p, s) for n, p, s in zip(positions, patch, stride, strict=True)]
        counts = [t.shape[0] for t in tables]
        per_item = int(np.prod(counts))
        key = ("occlusion", positions, patch, stride)
        device_tables = [on_device(x, (*key, axis), t) for axis, t in enumerate(tables)]
        # windows covering each position: the same for every image
        coverage = tables[0].sum(axis=0)
        if len(tables) == 2:
            coverage = np.outer(coverage, tables[1].sum(axis=0))
        base = targets.score(xe.batched_forward(adapter, x, self.batch_size))    # f(x), (N,)
        sums = xe.ItemSums(x.shape[0], adapter)
        build, finish = _occluder(adapter.channel_axis, self.baseline, len(positions))
        todo = xe.chunks(x.shape[0], per_item, self.batch_size)
        for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=self.name):
            items = chunk.items
            # Uploads only (no GPU sync per chunk); the windows, the occluded batch, the scores
            # and the drops are made in one pass that the adapter may compile.
            indices = _window_indices(adapter, x, counts, chunk.samples)
            rows, drop_base = adapter.broadcast_rows(x, items), adapter.take_rows(base, items)
            values = xe.built_scores(
                adapter, build, rows, drop_base, *device_tables, *indices,
                targets=targets, items=items, finish=finish,
            )
            sums.add(chunk, values)                                               # (B, *positions)
        return sums.result() / adapter.from_numpy(x, coverage.astype(np.float32))


def _window_indices(adapter: ModelAdapter, x: ep.Tensor, counts: list[int], samples: np.ndarray) -> list[ep.Tensor]:
    """The index of each window ``samples`` (row-major order) in each axis's table, uploaded."""
    if len(counts) == 1:
        return [adapter.from_numpy(x, samples.astype(np.int64))]
    rows, cols = np.divmod(samples.astype(np.int64), counts[1])
    return [adapter.from_numpy(x, rows), adapter.from_numpy(x, cols)]


def _window_masks(tables: tuple[ep.Tensor, ...], indices: tuple[ep.Tensor, ...]) -> ep.Tensor:
    """0/1 windows ``(B, *positions)`` from each axis's table ``(count, n)`` and the windows'
    indices in it ``(B,)``."""
    if len(tables) == 1:
        return tables[0][indices[0]]
    r = tables[0][indices[0]]                                                  # (B, H)
    c = tables[1][indices[1]]                                                  # (B, W)
    return r.expand_dims(2) * c.expand_dims(1)


def _occluder(channel_axis: int, baseline: float, axes: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``build(rows, base, *tables, *indices)`` → the occluded inputs, with each window and
    its image's clean score; ``finish(scores, window, base)`` → the drops spread over the
    windows ``(B, *positions)``. Pure functions of their tensors (see ``xe.built_scores``)."""

    def build(rows: ep.Tensor, base: ep.Tensor, *tables_and_indices: ep.Tensor) -> tuple[ep.Tensor, ...]:
        window = _window_masks(tables_and_indices[:axes], tables_and_indices[axes:])
        occluded = xe.perturb(rows, 1.0 - window, channel_axis, "inpainting", baseline)
        return occluded, window, base

    def finish(scores: ep.Tensor, window: ep.Tensor, base: ep.Tensor) -> ep.Tensor:
        return (base - scores).reshape((-1,) + (1,) * axes) * window

    return build, finish


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(Occlusion.name, Occlusion)
