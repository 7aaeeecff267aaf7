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
NORMALIZATIONS = ("expectation", "control_variate", "mask_sum")
#: ``nb_samples="auto"``: first checkpoint, default tolerance and maximum (see the docs page).
AUTO_FIRST = 256
AUTO_TOLERANCE = 0.1
AUTO_MAXIMUM = 8192


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

    @property
    def kind(self) -> str:
        """How :func:`masks_from` builds the masks: ``"image"``, ``"series"`` or ``"cells"``."""
        if len(self.size) == 2:
            return "image"
        return "series" if self.smooth else "cells"

    def tensors(self, adapter: ModelAdapter, like: ep.Tensor, samples: np.ndarray) -> tuple[ep.Tensor, ...]:
        """What :func:`masks_from` builds the masks of the given samples from, on ``like``'s
        device: the low-resolution grids, and for smoothed masks the cropped upsampling tables
        (cached on the device) with each mask's shifts."""
        grids, dy, dx = self.low_res(samples)
        g = adapter.from_numpy(like, grids)  # adapter.from_numpy: no stream synchronisation on a GPU
        if self.kind == "cells":
            return (g,)
        if self.kind == "series":
            table = on_device(like, ("rise-crops-1d", self.grid_size, self.size[0]), self._tables[0])
            return g, table, adapter.from_numpy(like, dy.astype(np.int64))
        key = ("rise-crops", self.grid_size, *self.size)
        rows = on_device(like, (*key, "h"), self._tables[0])
        cols = on_device(like, (*key, "w"), self._tables[1])
        return g, rows, cols, adapter.from_numpy(like, dy.astype(np.int64)), adapter.from_numpy(like, dx.astype(np.int64))

    def full(self, adapter: ModelAdapter, like: ep.Tensor, samples: np.ndarray) -> ep.Tensor:
        """Masks ``(B, H, W)`` (series ``(B, T)``, tabular ``(B, F)``) of the given samples,
        built on ``like``'s device."""
        return masks_from(self.kind, *self.tensors(adapter, like, samples))


def masks_from(kind: str, grids: ep.Tensor, *tables_and_shifts: ep.Tensor) -> ep.Tensor:
    """The full-size masks of :meth:`RiseMasks.tensors`: ``M = R_h[dy] · G · R_w[dx]ᵀ`` for
    images, ``R[dy] · g`` for series, the grids themselves for tabular rows (``kind``: see
    :attr:`RiseMasks.kind`). A pure function of its tensors, so it can run inside a compiled pass.

    Example:
        >>> m = masks_from(masks.kind, *masks.tensors(adapter, x, chunk.samples))   # (B, H, W)
    """
    if kind == "cells":
        return grids
    if kind == "series":
        table, dy = tables_and_shifts
        return matmul(table[dy], grids[:, :, None])[:, :, 0]
    rows, cols, dy, dx = tables_and_shifts
    return matmul(matmul(rows[dy], grids), cols[dx])


class Rise(PerturbationMethod):
    """RISE (Petsiuk et al., 2018): score-weighted average of random smooth masks.

    Args:
        nb_samples: number of masks ``N`` (one forward pass per mask and image), or ``"auto"``:
            masks in rounds up to ``max_samples``, each image stopping once the relative
            standard error of its map is at most ``tolerance`` (see
            :func:`xai_toolbox.extend.sample_schedule`); the masks used per image come back in
            the extras (``explain_with_extras``) as ``"nb_samples"``.
        grid_size: ``s``, cells per side of the low-resolution grid.
        preservation_probability: ``p``, probability that a cell is kept.
        baseline: value of masked pixels: ``x ⊙ M + (1 − M) · baseline`` (0 as the paper,
            where masking a normalised image gives the mean colour).
        normalization: ``"control_variate"`` (default: an unbiased estimate of the paper's
            expectation with the masks' coverage as a control variate:
            ``f̄ + Σ_n (f_n − f̄) M_n / ((N − 1) p)``; far less noise — at 2000 masks the maps of
            two seeds correlate 0.97 where the paper's correlate 0.66–0.93, see the benchmarks
            page; with a single mask it is the paper's estimate), ``"expectation"`` (paper: divide by
            ``N·p``) or
            ``"mask_sum"`` (Xplique: divide by each pixel's ``Σ_n M_n + 1e-4``; a ratio
            estimator of the same limit).
        tolerance: with ``nb_samples="auto"``, the relative standard error at which an image
            stops (default 0.1: a map correlating about 0.995 with the exact one).
        max_samples: with ``nb_samples="auto"``, the most masks per image (default 8192).
        seed: seed of the masks (``None``: fresh masks each call). The same masks are used for
            every image of a call, whatever ``batch_size``.

    Example:
        >>> maps = xt.Rise(model, nb_samples=4000, seed=0)(images, labels)     # (N, H, W)
        >>> maps, extras = xt.Rise(model, nb_samples="auto").explain_with_extras(images, labels)
    """

    name = "rise"
    stochastic = True
    input_kinds = ("image", "series", "tabular")

    def passes_per_image(self) -> int | None:
        """The masks per image (with ``nb_samples="auto"``: at most)."""
        return self.sampling().maximum

    def __init__(
        self,
        model: Any,
        *,
        nb_samples: int | str = 4000,
        grid_size: int = 7,
        preservation_probability: float = 0.5,
        baseline: float = 0.0,
        normalization: str = "control_variate",
        tolerance: float | None = None,
        max_samples: int | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.nb_samples = xe.sample_count("nb_samples", nb_samples)
        self.grid_size = xe.positive_int("grid_size", grid_size)
        self.preservation_probability = xe.in_range(
            "preservation_probability", preservation_probability, 0.0, 1.0
        )
        self.baseline = xe.number("baseline", baseline)
        self.normalization = xe.one_of("normalization", normalization, NORMALIZATIONS)
        self.tolerance = tolerance
        self.max_samples = max_samples
        self.seed = seed
        self.sampling()  # validates tolerance and max_samples against nb_samples

    def sampling(self) -> xe.SampleSchedule:
        """The number of masks: fixed, or the adaptive rounds of ``nb_samples="auto"``."""
        return xe.sample_schedule(
            "nb_samples", self.nb_samples, tolerance=self.tolerance, max_samples=self.max_samples,
            first=AUTO_FIRST, default_tolerance=AUTO_TOLERANCE, default_maximum=AUTO_MAXIMUM,
        )

    def check_call(self, x: ep.Tensor) -> None:
        xe.cell_geometry(x, self.adapter.channel_axis, self.grid_size, self.name)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor | xe.Explanation:
        adapter = self.adapter
        cells, size = xe.cell_geometry(x, adapter.channel_axis, self.grid_size, self.name)
        masks = RiseMasks(self.seed, cells[0], self.preservation_probability, size, smooth=x.ndim > 2)
        schedule = self.sampling()
        # One mask has no covariance to estimate: the control variate falls back to the paper's.
        normalization = "expectation" if schedule.maximum == 1 else self.normalization
        moments = MaskMoments(normalization, with_errors=schedule.adaptive)
        sums = xe.ItemSums(x.shape[0], adapter)     # (rows, positions) per image
        totals = xe.ItemSums(x.shape[0], adapter)   # Σ w_r(f) per image
        # Adaptive: scores less each image's clean score, so float32 sums of squares stay exact.
        clean = xe.batched_scores(adapter, targets, x, self.batch_size) if schedule.adaptive else None

        build = _perturber(masks.kind, adapter.channel_axis, self.baseline)

        def sample_round(round_: xe.SampleRound) -> None:
            todo = round_.chunks
            desc = f"{self.name} ({round_.hi} masks)" if schedule.adaptive else self.name
            for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=desc):
                rows = adapter.broadcast_rows(x, chunk.items)
                # masks, perturbed inputs and scores in one pass the adapter may compile
                scores, m = xe.built_scores(                                         # (B,), (B, *positions)
                    adapter, build, rows, *masks.tensors(adapter, x, chunk.samples),
                    targets=targets, items=chunk.items,
                )
                if clean is not None:
                    scores = scores - adapter.take_rows(clean, chunk.items)
                weights = moments.weights(scores)                                  # (R, B)
                flat = m.reshape((m.shape[0], -1))
                for pos, lo, hi in chunk.runs():
                    item = int(round_.active[pos])
                    sums.add_to(item, moments.sums(weights[:, lo:hi], flat[lo:hi]))
                    totals.add_to(item, weights[:, lo:hi].sum(axis=1))

        def error(active: np.ndarray, n: int) -> np.ndarray:
            s, t = adapter.take_rows(sums.result(), active), adapter.take_rows(totals.result(), active)
            assert clean is not None
            shift = adapter.take_rows(clean, active).reshape((-1, 1))
            estimate, se = moments.estimate(s, t, n, self.preservation_probability, shift, errors=True)
            assert se is not None
            return xe.relative_error(estimate, se)

        used = schedule.run(x.shape[0], self.batch_size, sample_round, error)
        n = used.astype(np.float32).reshape((-1, 1))
        shift = 0.0 if clean is None else clean.reshape((-1, 1))
        maps, _ = moments.estimate(
            sums.result(), totals.result(), adapter.from_numpy(x, n), self.preservation_probability, shift
        )
        maps = maps.reshape((x.shape[0], *size))
        extras = xe.sample_counts(schedule, "nb_samples", used)
        return xe.Explanation(maps, extras) if extras else maps


def _perturber(kind: str, channel_axis: int, baseline: float) -> Callable[..., tuple[ep.Tensor, ep.Tensor]]:
    """``build(rows, *mask_tensors)`` → the masked inputs ``x ⊙ M + (1 − M) · baseline`` and
    the masks (see ``xe.built_scores``)."""

    def build(rows: ep.Tensor, *mask_tensors: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        m = masks_from(kind, *mask_tensors)
        return xe.perturb(rows, m, channel_axis, "inpainting", baseline), m

    return build


class MaskMoments:
    """The per-image sums RISE accumulates, and its estimators with their standard errors.

    For scores ``f_n`` and masks ``M_n`` (flattened to positions), the sums are
    ``Σ_n w(f_n) M_n`` and ``Σ_n w(f_n) M_n²`` for weights ``w ∈ {f, 1, f²}`` — one matrix
    product per run of an image's pairs — and the totals ``Σ_n w(f_n)``. Which rows are
    kept depends on the normalisation and on whether standard errors are wanted.

    Example:
        >>> moments = MaskMoments("control_variate", with_errors=True)
        >>> sums = moments.sums(moments.weights(scores), masks)          # (R, positions)
    """

    def __init__(self, normalization: str, *, with_errors: bool) -> None:
        self.normalization = normalization
        self.with_errors = with_errors
        #: weights: "f" always; "1" for Σ M (mask_sum, control_variate); "ff" for errors
        if with_errors:
            self.names = ("f", "1", "ff")
        elif normalization == "expectation":
            self.names = ("f",)
        else:
            self.names = ("f", "1")
        self.squares = with_errors  # Σ w M² rows too

    def weights(self, scores: ep.Tensor) -> ep.Tensor:
        """``(R, B)``: the weights of each pair's mask."""
        rows = {"f": scores, "1": ep.ones_like(scores), "ff": scores * scores}
        return ep.stack([rows[name] for name in self.names], axis=0)

    def sums(self, weights: ep.Tensor, masks: ep.Tensor) -> ep.Tensor:
        """``(R, P)`` (or ``(2R, P)`` with the squares): weighted sums of masks ``(B, P)``."""
        first = matmul(weights, masks)
        if not self.squares:
            return first
        return ep.concatenate([first, matmul(weights, masks * masks)], axis=0)

    def estimate(
        self, sums: ep.Tensor, totals: ep.Tensor, n: Any, p: float, shift: Any = 0.0, *, errors: bool = False
    ) -> tuple[ep.Tensor, ep.Tensor | None]:
        """Maps ``(N, P)`` from the sums ``(N, rows, P)`` and totals ``(N, R)`` of ``n`` masks
        each (a number or an ``(N, 1)`` tensor), accumulated with the scores less ``shift``
        (0, or ``(N, 1)``: each image's clean score, which keeps the float32 sums of squares
        accurate); with ``errors``, the standard error of each position (up to a constant per
        image, which neither ranks nor correlations see)."""
        index = {name: i for i, name in enumerate(self.names)}
        r = len(self.names)
        fm = sums[:, index["f"]]                                  # Σ (f − c) M
        f_total = totals[:, index["f"] : index["f"] + 1]          # Σ (f − c)
        m = sums[:, index["1"]] if "1" in index else None         # Σ M
        if self.normalization == "expectation":
            estimate = (fm if m is None else fm + shift * m) / (n * p)
        elif self.normalization == "mask_sum":
            estimate = (fm + shift * m) / (m + MASK_SUM_EPS)
        else:
            mean_f = f_total / n
            estimate = mean_f + shift + (fm - mean_f * m) / ((n - 1) * p)
        if not errors:
            return estimate, None
        ffm = sums[:, index["ff"]]
        fmm, mm, ffmm = sums[:, r + index["f"]], sums[:, r + index["1"]], sums[:, r + index["ff"]]
        if self.normalization == "expectation":  # terms f M / p with f = f' + c
            total = fm + shift * m
            squares = ffmm + 2 * shift * fmm + shift * shift * mm
            spread = (squares - total * total / n) / (p * p)
        else:
            # Terms (f − f̄)(M − M̄) / p: the covariance part of the control-variate estimate.
            # The mask-sum ratio is f̄ plus the same covariance over M̄ instead of p (delta
            # method); the part of either error shared by every position (f̄'s own noise)
            # moves no rank and no correlation, so it is left out.
            a, b = f_total / n, m / n
            ff = totals[:, index["ff"] : index["ff"] + 1]
            squares = (
                ffmm - 2 * b * ffm + b * b * ff - 2 * a * fmm + 4 * a * b * fm - 2 * a * b * b * f_total
                + a * a * mm - 2 * a * a * b * m + a * a * b * b * n
            )
            cross = fm - n * a * b
            scale = p if self.normalization == "control_variate" else b + MASK_SUM_EPS / n
            spread = (squares - cross * cross / n) / (scale * scale)
        variance = ep.maximum(spread, 0.0) / ((n - 1) * n)
        return estimate, variance.sqrt()

Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(Rise.name, Rise)
