"""Shared machinery of black-box perturbation methods (RISE, Sobol, HSIC, Occlusion, ...).

* :class:`PerturbationMethod` checks the geometry of a call (grid or patch against the image)
  right after input validation, i.e. before targets are resolved and before any model call.
* :class:`BlockSampler` gives random low-resolution draws for any set of sample indices that
  depend only on ``(seed, sample index)``: draws come in fixed blocks, block ``b`` from
  ``numpy.random.default_rng([seed, b])``. Chunks of any ``batch_size`` see the same masks, and
  only one block is held in memory, so memory does not grow with the number of samples.
* :func:`perturb` applies a mask to images (inpainting, blurring, amplitude) on the device.

Example:
    >>> sampler = BlockSampler(0, lambda rng, k: (rng.random((k, 3, 3)) < 0.5,))
    >>> (grids,) = sampler.take(np.array([0, 5, 4000]))      # the same for any chunking
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

from . import _validation as v
from .base import AttributionMethod
from .errors import InputError, ParameterError
from .ops import box_blur, expand_to_inputs, interpolation_matrix, matmul, on_device, resize

PERTURBATIONS = ("inpainting", "blurring", "amplitude")


class PerturbationMethod(AttributionMethod):
    """An attribution method that only runs the model forward on perturbed inputs.

    Works for any model a forward pass can run, NumPy callables included. Subclasses
    implement :meth:`~xai_toolbox.AttributionMethod.check_call` to reject inputs their
    parameters do not fit (a grid larger than the image) before any model call.

    Example:
        >>> class Blackout(PerturbationMethod):
        ...     name = "blackout"
        ...     def _explain(self, x, targets):
        ...         ...                       # stream perturbed inputs through self.adapter.forward
    """

    needs_gradients = False
    family = "perturbation"


# -- parameters ------------------------------------------------------------------------------
def image_size(x: ep.Tensor, channel_axis: int, method: str) -> tuple[int, int]:
    """``(H, W)`` of a batch of images, or an :class:`InputError` for other inputs.

    Example:
        >>> image_size(x, adapter.channel_axis, "rise")
        (224, 224)
    """
    if x.ndim != 4:
        raise InputError(
            f"{method} perturbs images on a grid: expected (N, C, H, W) / (N, H, W, C) inputs, "
            f"got shape {tuple(x.shape)}; for tabular or series inputs use occlusion"
        )
    return (x.shape[2], x.shape[3]) if channel_axis == 1 else (x.shape[1], x.shape[2])


def check_grid(grid_size: int, size: tuple[int, int], method: str) -> None:
    """A ``grid_size × grid_size`` grid needs at least one pixel per cell.

    Example:
        >>> check_grid(8, (224, 224), "sobol")          # raises ParameterError for (4, 4)
    """
    if grid_size > min(size):
        raise ParameterError(
            f"{method}: grid_size={grid_size} is larger than the image ({size[0]}×{size[1]}); "
            f"use grid_size <= {min(size)}"
        )


def cell_geometry(
    x: ep.Tensor, channel_axis: int, grid_size: int, method: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(cells, positions)`` of a grid-based perturbation method for the batch ``x``:

    * images: ``grid_size × grid_size`` cells over ``(H, W)`` (a grid larger than the image is
      a :class:`~xai_toolbox.errors.ParameterError`);
    * series ``(N, C, T)`` / ``(N, T, C)``: ``grid_size`` segments of time over ``(T,)``;
    * tabular rows ``(N, F)``: one cell per feature, ``(F,)`` over ``(F,)`` (``grid_size`` does
      not apply, as for MuFidelity).

    Example:
        >>> cell_geometry(x_series, adapter.channel_axis, 8, "sobol")      # ((8,), (128,))
    """
    if x.ndim == 4:
        size = image_size(x, channel_axis, method)
        check_grid(grid_size, size, method)
        return (grid_size, grid_size), size
    if x.ndim == 3:
        length = int(x.shape[2] if channel_axis == 1 else x.shape[1])
        if grid_size > length:
            raise ParameterError(
                f"{method}: grid_size={grid_size} is longer than the series ({length} steps); "
                f"use grid_size <= {length}"
            )
        return (grid_size,), (length,)
    if x.ndim == 2:
        return (int(x.shape[1]),), (int(x.shape[1]),)
    raise InputError(f"{method} explains images, series or tabular rows; got inputs of shape {tuple(x.shape)}")


def upsample_cells(cells: ep.Tensor, positions: tuple[int, ...], mode: str = "nearest") -> ep.Tensor:
    """Values per cell ``(B, *cells)`` on the positions ``(B, *positions)`` of
    :func:`cell_geometry`: resized over images (``mode`` as :func:`resize`), interpolated along
    time for series, unchanged for tabular rows.

    Example:
        >>> masks = upsample_cells(adapter.from_numpy(x, low), positions)       # (B, *positions)
    """
    grid = tuple(cells.shape[1:])
    if grid == tuple(positions):
        return cells
    if len(positions) == 2:
        return resize(cells, positions, mode)  # type: ignore[arg-type]
    matrix = interpolation_matrix(grid[0], positions[0], mode).T.copy()            # (g, T)
    return matmul(cells, on_device(cells, ("cells-1d", grid[0], positions[0], mode), matrix))


# -- random low-resolution draws ---------------------------------------------------------------
Draw = Callable[[np.random.Generator, int], tuple[np.ndarray, ...]]


class BlockSampler:
    """Random draws for sample indices, reproducible whatever the chunking.

    ``draw(rng, k)`` returns a tuple of arrays with ``k`` rows (one per sample). Samples are
    grouped in blocks of ``block`` consecutive indices; block ``b`` is drawn with
    ``numpy.random.default_rng([seed, b])``. ``seed=None`` picks one fresh seed per sampler.

    Example:
        >>> sampler = BlockSampler(0, lambda rng, k: (rng.random((k, 7, 7)) < 0.5,))
        >>> (grids,) = sampler.take(chunk.samples)         # the same for any chunking
    """

    def __init__(self, seed: int | None, draw: Draw, block: int = 256) -> None:
        if seed is None:  # one random seed for the whole call, so all chunks agree
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed, self.draw, self.block = seed, draw, block
        self._cache: OrderedDict[int, tuple[np.ndarray, ...]] = OrderedDict()

    def _block(self, b: int) -> tuple[np.ndarray, ...]:
        found = self._cache.get(b)
        if found is None:
            found = self.draw(np.random.default_rng([self.seed, b]), self.block)
            self._cache[b] = found
            while len(self._cache) > 2:  # a chunk spans at most a few blocks; keep memory flat
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return found

    def take(self, samples: np.ndarray) -> tuple[np.ndarray, ...]:
        """The draws of ``samples`` (sample indices), stacked in that order."""
        samples = np.asarray(samples, dtype=np.int64)
        blocks = samples // self.block
        parts: list[tuple[np.ndarray, ...]] = []
        start = 0
        # consecutive runs of one block (chunks are runs of consecutive samples)
        while start < len(samples):
            b = blocks[start]
            stop = start + 1
            while stop < len(samples) and blocks[stop] == b:
                stop += 1
            arrays = self._block(int(b))
            offsets = samples[start:stop] - b * self.block
            parts.append(tuple(a[offsets] for a in arrays))
            start = stop
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(cols, axis=0) for cols in zip(*parts, strict=True))


# -- perturbations -----------------------------------------------------------------------------
def upsample_nearest(grids: ep.Tensor, size: tuple[int, int]) -> ep.Tensor:
    """Low-resolution masks ``(B, g, g)`` → ``(B, H, W)`` by nearest neighbour (half-pixel).

    Example:
        >>> masks = upsample_nearest(adapter.from_numpy(x, low_res), (224, 224))
    """
    return resize(grids, size, "nearest")


def reference_images(
    x: ep.Tensor, channel_axis: int, perturbation: str, baseline: float, blur_size: int
) -> ep.Tensor | float | None:
    """What masked pixels move towards: a value (inpainting), blurred images, or nothing.

    Example:
        >>> reference = reference_images(x, adapter.channel_axis, "blurring", 0.0, 10)
    """
    if perturbation == "inpainting":
        return baseline
    if perturbation == "blurring":
        return box_blur(x, channel_axis, blur_size)
    return None


def perturb(
    x: ep.Tensor,
    masks: ep.Tensor,
    channel_axis: int,
    perturbation: str,
    reference: ep.Tensor | float | None,
    amplitude_sigma: float = 1.0,
) -> ep.Tensor:
    """Perturb images ``x`` ``(B, ...)`` with masks ``(B, H, W)`` in ``[0, 1]`` (1 = keep).

    * inpainting, blurring: ``x ⊙ M + (1 − M) ⊙ x0`` with ``x0`` the baseline value or the
      blurred image;
    * amplitude: ``x ⊙ (1 + σ (M − 0.5))`` — the pixel amplitude scaled between
      ``1 − σ/2`` (M = 0) and ``1 + σ/2`` (M = 1), unchanged at M = 0.5.

    Example:
        >>> perturbed = perturb(rows, masks, adapter.channel_axis, "inpainting", 0.0)
    """
    m = expand_to_inputs(masks, x.ndim, channel_axis)
    if perturbation == "amplitude":
        return x * (1.0 + amplitude_sigma * (m - 0.5))
    if isinstance(reference, ep.Tensor):
        return reference + (x - reference) * m
    if reference == 0.0:
        return x * m
    return x * m + (1.0 - m) * float(reference)  # type: ignore[arg-type]


def perturbation_params(
    perturbation: Any, blur_size: Any, amplitude_sigma: Any, baseline: Any
) -> tuple[str, int, float, float]:
    """Validate the perturbation options shared by Sobol and HSIC.

    Example:
        >>> perturbation_params("blurring", 10, 1.0, 0.0)
        ('blurring', 10, 1.0, 0.0)
    """
    return (
        v.one_of("perturbation", perturbation, PERTURBATIONS),
        v.positive_int("blur_size", blur_size),
        v.in_range("amplitude_sigma", amplitude_sigma, 0.0, 2.0, inclusive=True),
        v.number("baseline", baseline),
    )
