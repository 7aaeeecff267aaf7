"""HSIC attribution method (Novello, Fel, Vigouroux — NeurIPS 2022).

"Making Sense of Dependence: Efficient Black-box Explanations Using Dependence Measure".
Each cell ``i`` of a ``grid_size × grid_size`` grid is a binary random variable ``X_i`` (kept or
masked, probability 1/2); the attribution of the cell is the Hilbert–Schmidt independence
criterion between ``X_i`` and the score ``Y = f(τ(x, X))``, estimated on ``n = nb_design``
perturbed images:

    HSIC_i = tr(K_i H L H) / (n − 1)²,   H = I − 11ᵀ / n

with ``K_i`` a Dirac kernel on ``X_i`` and ``L`` a Gaussian RBF kernel on ``Y``. For binary
``X_i`` and the Dirac kernel, ``H K_i H = 2 z_i z_iᵀ`` with ``z_i = X_i − mean(X_i)`` (the
"modified Dirac" kernel ``1 + 1/2 − (x − x')²`` of the official code gives the same centred
matrix), so ``HSIC_i = 2 z_iᵀ L z_i / (n − 1)²``: we compute it in row blocks of ``L`` so
memory stays ``O(n)`` per block whatever ``nb_design``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import PerturbationMethod, Targets, matmul

from .sobol import cell_mask_builder, cell_mask_scores, check_perturbation

SAMPLERS = ("lhs", "orthogonal", "sobol", "random")
BANDWIDTHS = ("median_heuristic", "median_output")
#: Elements of the output kernel held at once by the estimator (``rows × nb_design``).
KERNEL_BLOCK = 1 << 16
#: Masks per Latin-hypercube block (the checkpoints of ``nb_design="auto"`` are multiples).
LHS_BLOCK = 128
#: ``nb_design="auto"``: first checkpoint, default tolerance and maximum.
AUTO_FIRST = 256
AUTO_TOLERANCE = 0.1
AUTO_MAXIMUM = 4096


# -- design ------------------------------------------------------------------------------------
def hsic_design(nb_design: int, dim: int, sampler: str = "orthogonal", seed: int | None = 0) -> np.ndarray:
    """``(nb_design, dim)`` binary masks (1 = keep), each cell kept with probability 1/2.

    A point ``u ∈ [0, 1)^dim`` of the sampler becomes the mask ``u ≥ 0.5`` (the orthogonal arrays
    are binary already):

    * ``"lhs"``: Latin hypercube (the paper's sampler), seeded, in blocks of
      :data:`LHS_BLOCK` masks (block ``b`` from ``default_rng([seed, b])``), so the first
      ``k · LHS_BLOCK`` masks of any larger design are the same (adaptive sampling adds masks
      without redrawing); every column is balanced within each block (exactly half of its
      masks keep each cell when the block size is even);
    * ``"sobol"``: unscrambled Sobol sequence without its all-zeros first point (Xplique's
      default, ``tf.math.sobol_sample``); deterministic, ``seed`` unused;
    * ``"orthogonal"``: a randomised two-level orthogonal array of strength 3, seeded, in
      blocks of :func:`orthogonal_block` masks: within a block every cell is kept in exactly
      half of the masks, and every pair and every triple of cells takes each of its value
      combinations equally often, so no other cell's effect — nor any two-cell interaction —
      leaks into a cell's split of the scores (see :func:`orthogonal_array`);
    * ``"random"``: i.i.d. uniform (the official code's Monte-Carlo sampler), seeded.

    Every sampler but ``"sobol"`` gives each mask the exact law of independent fair cells.

    Example:
        >>> masks = hsic_design(1500, 64, seed=0)              # (1500, 64) of 0./1., orthogonal
        >>> paper = hsic_design(1500, 64, "lhs", seed=0)       # the paper's Latin hypercube
    """
    from scipy.stats import qmc

    xe.positive_int("nb_design", nb_design)
    xe.positive_int("dim", dim)
    xe.one_of("sampler", sampler, SAMPLERS)
    if sampler == "sobol":
        engine = qmc.Sobol(d=dim, scramble=False)
        with warnings.catch_warnings():  # balance warnings: nb_design need not be a power of 2
            warnings.simplefilter("ignore")
            engine.fast_forward(1)
            u = engine.random(nb_design)
    elif sampler == "orthogonal":
        rows = orthogonal_block(dim)
        base = 0 if seed is None else seed
        blocks = [orthogonal_array(dim, np.random.default_rng([base, b, 1]))
                  for b in range(-(-nb_design // rows))]
        return np.concatenate(blocks, axis=0)[:nb_design].astype(np.float32)
    elif sampler == "lhs":
        blocks = []
        for b, start in enumerate(range(0, nb_design, LHS_BLOCK)):
            rng = np.random.default_rng([0 if seed is None else seed, b])
            try:
                engine = qmc.LatinHypercube(d=dim, rng=rng)
            except TypeError:  # SciPy < 1.15 calls the generator `seed`
                engine = qmc.LatinHypercube(d=dim, seed=rng)
            blocks.append(engine.random(min(LHS_BLOCK, nb_design - start)))
        u = np.concatenate(blocks, axis=0)
    else:
        u = np.random.default_rng(seed).random((nb_design, dim))
    return (u >= 0.5).astype(np.float32)


def orthogonal_block(dim: int) -> int:
    """Masks per block of the ``"orthogonal"`` sampler: the least ``2^m`` with ``2^(m−1) ≥ dim``
    (128 for an 8 × 8 grid)."""
    return 1 << (max(1, int(dim - 1).bit_length()) + 1)


def orthogonal_array(dim: int, rng: np.random.Generator) -> np.ndarray:
    """One randomised block of the ``"orthogonal"`` sampler: ``(orthogonal_block(dim), dim)`` of 0/1.

    Row ``k`` of the ``2^m`` rows keeps cell ``i`` when the parity of ``k & c_i`` differs from a
    random bit ``s_i``, where the ``c_i`` are distinct ``m``-bit words with the top bit set
    (drawn at random among the ``2^(m−1)`` such words). Any one, two or three of these words
    are linearly independent over GF(2) — the sum of two has its top bit clear, so it is never a
    third — which makes the block an orthogonal array of strength 3 (the resolution-IV
    fractional factorial design of experimental design). The shift ``s`` makes
    each row uniform on ``{0, 1}^dim``, and the rows come in a random order (a design cut
    inside a block is a random subset of it).

    Example:
        >>> block = orthogonal_array(64, np.random.default_rng(0))     # (128, 64)
        >>> bool((block.mean(axis=0) == 0.5).all())
        True
    """
    n = orthogonal_block(dim)
    m = n.bit_length() - 1
    words = rng.choice(np.arange(n // 2, n), size=dim, replace=False)
    shift = rng.integers(0, 2, size=dim)
    k = rng.permutation(n)
    bits = (k[:, None] >> np.arange(m)[None, :]) & 1                     # (n, m)
    cols = (words[:, None] >> np.arange(m)[None, :]) & 1                 # (dim, m)
    return ((bits @ cols.T) % 2) ^ shift[None, :]


# -- output kernel bandwidth -------------------------------------------------------------------
def median_pairwise_distance(y: np.ndarray) -> float:
    """Median of ``|y_j − y_k|`` over the pairs ``j < k`` (the median heuristic), exactly.

    Selection by bisection over the value with an ``O(n log n)`` pair count, so memory stays
    ``O(n)`` (the ``n (n − 1) / 2`` distances are never formed).
    """
    y = np.sort(np.asarray(y, dtype=np.float64).ravel())
    n = len(y)
    m = n * (n - 1) // 2
    if m == 0:
        return 0.0
    order = np.arange(n)

    def count(t: float) -> int:  # pairs j < k with y_k − y_j <= t
        return int((np.searchsorted(y, y + t, side="right") - order - 1).sum())

    def kth(k: int) -> float:  # k-th smallest distance, 0-indexed
        if count(0.0) > k:
            return 0.0
        lo, hi = 0.0, float(y[-1] - y[0])
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:
                break
            if count(mid) > k:
                hi = mid
            else:
                lo = mid
        # the answer is the smallest distance above lo
        idx = np.searchsorted(y, y + lo, side="right")
        ok = idx < n
        return float((y[idx[ok]] - y[ok]).min())

    if m % 2:
        return kth(m // 2)
    return 0.5 * (kth(m // 2 - 1) + kth(m // 2))


def output_bandwidth(y: np.ndarray, bandwidth: str | float) -> float:
    """The RBF width of the output kernel for the scores ``y`` of one image.

    ``"median_heuristic"``: median pairwise distance; ``"median_output"``: ``|median(y)|`` as
    the official code and Xplique; a number: that width. A zero width (tied or constant
    outputs) falls back to the median distance, then to the range of ``y``; constant outputs
    carry no dependence and give HSIC = 0 whatever the width.
    """
    if not isinstance(bandwidth, str):
        return float(bandwidth)
    if bandwidth == "median_output":
        width = abs(float(np.median(np.asarray(y, dtype=np.float64))))
        if width > 0:
            return width
        warnings.warn(
            "hsic: the median of the outputs is 0, so the 'median_output' bandwidth is "
            "degenerate; using the median pairwise distance instead",
            RuntimeWarning,
            stacklevel=3,
        )
    width = median_pairwise_distance(y)
    if width > 0:
        return width
    spread = float(np.max(y) - np.min(y))
    return spread if spread > 0 else 1.0


# -- estimator -----------------------------------------------------------------------------------
def hsic_scores(z: Any, y: Any, width: float, block: int = KERNEL_BLOCK) -> Any:
    """``HSIC_i = 2 z_iᵀ L z_i / (n − 1)²`` for all cells at once.

    Args:
        z: centred binary masks ``(n, d)`` (``X − mean(X, axis=0)``).
        y: scores ``(n,)``.
        width: RBF width ``σ`` of ``L_jk = exp(−(y_j − y_k)² / (2σ²))``.
        block: elements of ``L`` formed at a time.

    Returns ``(d,)`` in the type of ``z`` (NumPy or a framework tensor).
    """
    return hsic_with_error(z, y, width, block, errors=False)[0]


def hsic_with_error(z: Any, y: Any, width: float, block: int = KERNEL_BLOCK, *, errors: bool = True) -> Any:
    """:func:`hsic_scores` and, with ``errors``, the standard error of each score ``(d,)``.

    ``HSIC_i = 2/(n−1)² Σ_j u_ij`` with ``u_ij = z_ij (L z_i)_j``. It is a V-statistic of
    degree two in the samples, whose variance is about ``4/n`` times that of its first-order
    projection, estimated by ``u_ij / n``: ``SE_i = 4 n / (n−1)² · sd_j(u_ij) / √n``.

    Example:
        >>> scores, se = hsic_with_error(z, y, width)
    """
    (zt, yt), restore = ep.astensors_(z, y)
    n = zt.shape[0]
    rows = max(1, block // n)
    scale = -0.5 / (width * width)
    total = squares = None
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        kernel = ((yt[start:stop].reshape((-1, 1)) - yt.reshape((1, -1))) ** 2 * scale).exp()
        u = zt[start:stop] * matmul(kernel, zt)
        part = u.sum(axis=0)
        total = part if total is None else total + part
        if errors:
            part2 = (u * u).sum(axis=0)
            squares = part2 if squares is None else squares + part2
    assert total is not None
    scores = total * (2.0 / (n - 1) ** 2)
    if not errors:
        return restore(scores), None
    assert squares is not None
    spread = ep.maximum(squares - total * total / n, 0.0) / (n - 1)       # var_j(u_ij)
    return restore(scores), restore((spread / n).sqrt() * (4.0 * n / (n - 1) ** 2))


class HsicAttribution(PerturbationMethod):
    """HSIC attribution (Novello, Fel, Vigouroux — NeurIPS 2022): dependence of the score on cells.

    Every image is explained with the same ``nb_design`` binary masks (forward passes per
    image), streamed ``batch_size`` at a time across images.

    Args:
        grid_size: cells per side of the grid.
        nb_design: number of masks ``n`` (the paper: 1500; 750 for a lower budget), or
            ``"auto"``: masks in rounds up to ``max_design``, each image stopping once the
            relative standard error of its map is at most ``tolerance``; the masks used per
            image come back in the extras as ``"nb_design"``.
        sampler: ``"orthogonal"`` (default: strength-3 orthogonal arrays, a map as close to
            the converged one from 2.3× (benchmark ResNet) to 11× (demo CNN) fewer masks than
            the Latin hypercube, see
            :func:`orthogonal_array`), ``"lhs"`` (the paper's), ``"sobol"`` (Xplique's default)
            or ``"random"``.
        bandwidth: RBF width of the output kernel: ``"median_heuristic"`` (median pairwise
            distance of the scores; invariant to shifting/scaling the scores),
            ``"median_output"`` (median of the scores, as the official code and Xplique) or a
            positive number.
        perturbation, baseline, blur_size, amplitude_sigma: as :class:`SobolAttribution`
            (default inpainting with 0).
        tolerance: with ``nb_design="auto"``, the relative standard error at which an image
            stops (default 0.1).
        max_design: with ``nb_design="auto"``, the most masks per image (default 4096).
        seed: seed of the ``lhs``/``random`` samplers (``None``: fresh masks each call).

    Example:
        >>> maps = xt.HsicAttribution(model, nb_design=1500, seed=0)(images, labels)
    """

    name = "hsic"
    stochastic = True
    input_kinds = ("image", "series", "tabular")

    def passes_per_image(self) -> int | None:
        """The masks per image (with ``nb_design="auto"``: at most)."""
        return self.sampling().maximum

    def __init__(
        self,
        model: Any,
        *,
        grid_size: int = 8,
        nb_design: int | str = 1500,
        sampler: str = "orthogonal",
        bandwidth: str | float = "median_heuristic",
        perturbation: str = "inpainting",
        baseline: float = 0.0,
        blur_size: int = 10,
        amplitude_sigma: float = 1.0,
        tolerance: float | None = None,
        max_design: int | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.grid_size = xe.positive_int("grid_size", grid_size)
        self.nb_design = xe.sample_count("nb_design", nb_design)
        if self.nb_design != xe.AUTO and self.nb_design < 4:
            raise xt.ParameterError(f"nb_design must be at least 4 for an HSIC estimate, got {nb_design}")
        self.sampler = xe.one_of("sampler", sampler, SAMPLERS)
        if isinstance(bandwidth, str):
            self.bandwidth: str | float = xe.one_of("bandwidth", bandwidth, BANDWIDTHS)
        else:
            self.bandwidth = xe.in_range("bandwidth", bandwidth, 0.0, float("inf"))
        self.perturbation, self.blur_size, self.amplitude_sigma, self.baseline = xe.perturbation_params(
            perturbation, blur_size, amplitude_sigma, baseline
        )
        self.tolerance = tolerance
        self.max_design = max_design
        self.seed = seed
        self.sampling()  # validates tolerance and max_design against nb_design

    def sampling(self) -> xe.SampleSchedule:
        """The number of masks: fixed, or the adaptive rounds of ``nb_design="auto"``."""
        return xe.sample_schedule(
            "nb_design", self.nb_design, tolerance=self.tolerance, max_samples=self.max_design,
            first=AUTO_FIRST, default_tolerance=AUTO_TOLERANCE, default_maximum=AUTO_MAXIMUM,
            minimum=4, max_name="max_design",
        )

    def check_call(self, x: ep.Tensor) -> None:
        xe.cell_geometry(x, self.adapter.channel_axis, self.grid_size, self.name)
        check_perturbation(self.perturbation, x, self.name)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor | xe.Explanation:
        adapter = self.adapter
        cells, positions = xe.cell_geometry(x, adapter.channel_axis, self.grid_size, self.name)
        schedule = self.sampling()
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        design = hsic_design(schedule.maximum, int(np.prod(cells)), self.sampler, seed)  # (n, d) low-res
        reference = xe.reference_images(x, adapter.channel_axis, self.perturbation, self.baseline, self.blur_size)
        parts: list[list[ep.Tensor]] = [[] for _ in range(x.shape[0])]     # scores per round

        build = cell_mask_builder(
            positions, adapter.channel_axis, self.perturbation, self.amplitude_sigma,
            None if isinstance(reference, ep.Tensor) else reference,
        )

        def sample_round(round_: xe.SampleRound) -> None:
            scores = xe.PairScores(len(round_.active), round_.hi - round_.lo, adapter)
            todo = round_.chunks
            desc = f"{self.name} ({round_.hi} masks)" if schedule.adaptive else self.name
            for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=desc):
                items = chunk.items
                low = design[chunk.samples].reshape((-1, *cells))
                scores.put(chunk, cell_mask_scores(adapter, build, x, reference, low, targets, items))
            y = scores.result()
            for pos, item in enumerate(round_.active):
                parts[item].append(y[pos])

        def estimate(items: np.ndarray, n: int, errors: bool) -> tuple[ep.Tensor, ep.Tensor | None]:
            first = design[:n]
            z = adapter.from_numpy(x, (first - first.mean(axis=0, keepdims=True, dtype=np.float64)).astype(np.float32))
            y = ep.stack([p[0] if len(p) == 1 else ep.concatenate(p, axis=0) for p in (parts[i] for i in items)])
            y_host = y.numpy()  # one small transfer: n scores per image, for the bandwidth
            found = [hsic_with_error(z, y[k], output_bandwidth(y_host[k], self.bandwidth), errors=errors)
                     for k in range(len(items))]
            maps = ep.stack([f[0] for f in found], axis=0)
            return maps, ep.stack([f[1] for f in found], axis=0) if errors else None

        def error(active: np.ndarray, n: int) -> np.ndarray:
            maps, se = estimate(active, n, errors=True)
            assert se is not None
            return xe.relative_error(maps, se)

        used = schedule.run(x.shape[0], self.batch_size, sample_round, error)
        maps = ep.stack(
            [estimate(np.array([i]), int(used[i]), errors=False)[0][0] for i in range(x.shape[0])], axis=0
        )
        maps = xe.upsample_cells(maps.reshape((x.shape[0], *cells)), positions, "bicubic")
        extras = xe.sample_counts(schedule, "nb_design", used)
        return xe.Explanation(maps, extras) if extras else maps


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(HsicAttribution.name, HsicAttribution)
