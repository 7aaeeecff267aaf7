"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das, Saenko — BMVC 2018).

The saliency of a pixel is the model's score averaged over random masks, weighted by how much
each mask keeps that pixel:

    S(λ) = 1 / (N·p) · Σ_n f(x ⊙ M_n) · M_n(λ)

Masks: ``s × s`` grids of Bernoulli(p) "keep" cells, bilinearly upsampled to ``(s + 1) · cell``
pixels (``cell = ceil(H / s)``) and cropped at a random shift in ``[0, cell)`` per axis, as in
the official code. Series get the same masks along time (``s`` cells); tabular rows one
Bernoulli(p) cell per feature, unsmoothed. Grids and shifts are drawn on the host at low resolution; the masks are built
on the device from a cached table of cropped interpolation matrices: ``M = R_h[dy] · G · R_w[dx]ᵀ``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import (
    BlockSampler,
    ModelAdapter,
    PerturbationMethod,
    Targets,
    interpolation_matrix,
    matmul,
    on_device,
)

#: Added to the per-pixel mask sum in the ``"mask_sum"`` normalisation (Xplique's variant).
MASK_SUM_EPS = 1e-4


def crop_tables(grid_size: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cropped bilinear upsampling matrices, one per shift, for each axis.

    Returns ``(T_h, T_w)`` of shapes ``(cell_h, H, s)`` and ``(cell_w, W, s)``: ``T_h[d]`` maps
    the ``s`` grid rows to the image rows ``d .. d + H`` of the ``(s + 1) · cell_h`` upsampled
    mask (half-pixel centres, edges replicated — skimage's ``order=1, mode="reflect"``).
    """
    tables = []
    for n in size:
        cell = math.ceil(n / grid_size)
        up = interpolation_matrix(grid_size, (grid_size + 1) * cell, "bilinear")
        tables.append(np.stack([up[d : d + n] for d in range(cell)]))
    return tables[0], tables[1]


class RiseMasks:
    """The RISE masks of one configuration: low-resolution draws and their full-size masks.

    Sample ``n`` always gets the same mask for a given ``seed`` (see :class:`BlockSampler`).

    Example:
        >>> masks = RiseMasks(seed=0, grid_size=7, probability=0.5, size=(224, 224))
        >>> grids, dy, dx = masks.low_res(np.arange(8))        # (8, 7, 7), (8,), (8,)
    """

    def __init__(
        self, seed: int | None, grid_size: int, probability: float, size: tuple[int, ...], *, smooth: bool = True
    ) -> None:
        self.grid_size, self.probability, self.size, self.smooth = grid_size, probability, size, smooth
        self.cells = tuple(math.ceil(n / grid_size) for n in size)
        self.sampler = BlockSampler(seed, self._draw)
        if len(size) == 2:
            th, tw = crop_tables(grid_size, size)  # type: ignore[arg-type]
            self._tables = (th, np.ascontiguousarray(tw.transpose(0, 2, 1)))   # (cell_h, H, s), (cell_w, s, W)
        elif smooth:  # series: one axis, (cell, T, s)
            self._tables = (crop_tables(grid_size, (size[0], size[0]))[0],)

    def _draw(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, ...]:
        s = self.grid_size
        if len(self.size) == 1:  # series (smoothed along time) or tabular rows (one cell per feature)
            grids = (rng.random((k, s)) < self.probability).astype(np.float32)
            return grids, rng.integers(0, self.cells[0], size=k), np.zeros(k, np.int64)
        grids = (rng.random((k, s, s)) < self.probability).astype(np.float32)
        dy = rng.integers(0, self.cells[0], size=k)
        dx = rng.integers(0, self.cells[1], size=k)
        return grids, dy, dx

    def low_res(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(grids (B, s, s), dy (B,), dx (B,))`` of the given sample indices."""
        grids, dy, dx = self.sampler.take(samples)
        return grids, dy, dx

    def full(self, adapter: ModelAdapter, like: ep.Tensor, samples: np.ndarray) -> ep.Tensor:
        """Masks ``(B, H, W)`` (series ``(B, T)``, tabular ``(B, F)``) of the given samples,
        built on ``like``'s device."""
        grids, dy, dx = self.low_res(samples)
        if len(self.size) == 1:
            g = adapter.from_numpy(like, grids)
            if not self.smooth:
                return g
            key = ("rise-crops-1d", self.grid_size, self.size[0])
            r = on_device(like, key, self._tables[0])[adapter.from_numpy(like, dy.astype(np.int64))]
            return matmul(r, g[:, :, None])[:, :, 0]
        key = ("rise-crops", self.grid_size, *self.size)
        rows = on_device(like, (*key, "h"), self._tables[0])
        cols = on_device(like, (*key, "w"), self._tables[1])
        # adapter.from_numpy: no stream synchronisation per chunk on a GPU
        g = adapter.from_numpy(like, grids)
        r = rows[adapter.from_numpy(like, dy.astype(np.int64))]
        c = cols[adapter.from_numpy(like, dx.astype(np.int64))]
        return matmul(matmul(r, g), c)


class Rise(PerturbationMethod):
    """RISE (Petsiuk et al., 2018): score-weighted average of random smooth masks.

    Args:
        nb_samples: number of masks ``N`` (one forward pass per mask and image).
        grid_size: ``s``, cells per side of the low-resolution grid.
        preservation_probability: ``p``, probability that a cell is kept.
        baseline: value of masked pixels: ``x ⊙ M + (1 − M) · baseline`` (0 as the paper,
            where masking a normalised image gives the mean colour).
        normalization: ``"expectation"`` (paper: divide by ``N·p``) or ``"mask_sum"``
            (Xplique: divide by each pixel's ``Σ_n M_n + 1e-4``; same limit, lower variance).
        seed: seed of the masks (``None``: fresh masks each call). The same masks are used for
            every image of a call, whatever ``batch_size``.

    Example:
        >>> maps = xt.Rise(model, nb_samples=4000, seed=0)(images, labels)     # (N, H, W)
    """

    name = "rise"
    stochastic = True
    input_kinds = ("image", "series", "tabular")

    def passes_per_image(self) -> int | None:
        return self.nb_samples

    def __init__(
        self,
        model: Any,
        *,
        nb_samples: int = 4000,
        grid_size: int = 7,
        preservation_probability: float = 0.5,
        baseline: float = 0.0,
        normalization: str = "expectation",
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.positive_int("nb_samples", nb_samples)
        self.grid_size = xe.positive_int("grid_size", grid_size)
        self.preservation_probability = xe.in_range(
            "preservation_probability", preservation_probability, 0.0, 1.0
        )
        self.baseline = xe.number("baseline", baseline)
        self.normalization = xe.one_of("normalization", normalization, ("expectation", "mask_sum"))
        self.seed = seed

    def check_call(self, x: ep.Tensor) -> None:
        xe.cell_geometry(x, self.adapter.channel_axis, self.grid_size, self.name)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        adapter = self.adapter
        cells, size = xe.cell_geometry(x, adapter.channel_axis, self.grid_size, self.name)
        masks = RiseMasks(self.seed, cells[0], self.preservation_probability, size, smooth=x.ndim > 2)
        sums = xe.ItemSums(x.shape[0], adapter)
        mask_sums = xe.ItemSums(x.shape[0], adapter) if self.normalization == "mask_sum" else None
        todo = xe.chunks(x.shape[0], self.nb_samples, self.batch_size)
        for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=self.name):
            items = chunk.items
            m = masks.full(adapter, x, chunk.samples)                          # (B, *positions)
            rows = adapter.broadcast_rows(x, items)
            perturbed = xe.perturb(rows, m, adapter.channel_axis, "inpainting", self.baseline)
            scores = targets.take(items).score(adapter.forward(perturbed))      # (B,)
            sums.add(chunk, scores.reshape((-1,) + (1,) * (m.ndim - 1)) * m)
            if mask_sums is not None:
                mask_sums.add(chunk, m)
        if mask_sums is not None:
            return sums.result() / (mask_sums.result() + MASK_SUM_EPS)
        return sums.result() / (self.nb_samples * self.preservation_probability)


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(Rise.name, Rise)
