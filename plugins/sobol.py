"""Sobol attribution method (Fel, Cadène, Chalvidal, Cord, Vigouroux, Serre — NeurIPS 2021).

Each cell ``i`` of a ``grid_size × grid_size`` grid is a random variable ``M_i ∈ [0, 1]`` that
modulates a perturbation of its region; the attribution of the cell is its total-order Sobol
index, the share of the score's variance it explains, alone or with any other cells:

    ST_i = E_{M~i}[ Var_{M_i}(f(τ(x, M)) | M~i) ] / Var(f(τ(x, M)))

estimated with the Jansen estimator on a replicated (pick-freeze) design built from an
unscrambled Sobol quasi-Monte Carlo sequence. The ``grid × grid`` map of indices is upsampled
to the image with bicubic interpolation.

The pieces are public and testable on their own: :func:`sobol_design`,
:func:`replicated_design` (and the streamed :func:`replicated_rows`), :func:`jansen_total_order`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import PerturbationMethod, Targets

#: Lower bound of the output variance in the Jansen estimator (as Xplique), so a constant
#: output gives indices 0 instead of 0 / 0.
MIN_VARIANCE = 1e-12
#: ``nb_design="auto"``: first design size, default tolerance and largest design.
AUTO_FIRST = 8
AUTO_TOLERANCE = 0.1
AUTO_MAXIMUM = 128


#: Design samplers of :class:`SobolAttribution` (see :func:`sobol_design`).
SAMPLERS = ("scrambled", "sobol", "random")


def sobol_design(nb_design: int, dim: int, sampler: str = "sobol", seed: int | None = 0) -> np.ndarray:
    """The first ``nb_design`` points of a design in ``[0, 1)^dim``.

    * ``"sobol"``: the unscrambled Sobol sequence (SciPy's, starting at the all-zeros point,
      as the official PyTorch code and Xplique); deterministic, ``seed`` unused;
    * ``"scrambled"``: the Sobol sequence with Owen's scrambling, seeded (randomised QMC:
      each estimate is unbiased and independent seeds give independent estimates);
    * ``"random"``: i.i.d. uniform points, seeded (plain Monte Carlo).

    ``nb_design`` must be a power of two (Sobol points are balanced only then). Every design is
    nested: its first ``N`` points are the design of ``N`` points (adaptive sampling adds points
    without redrawing).

    Example:
        >>> ab = sobol_design(32, 2 * 64)          # A = ab[:, :64], B = ab[:, 64:]
        >>> ab_s = sobol_design(32, 2 * 64, "scrambled", seed=0)
    """
    from scipy.stats import qmc

    xe.power_of_two("nb_design", nb_design)
    xe.positive_int("dim", dim)
    xe.one_of("sampler", sampler, SAMPLERS)
    rng = np.random.default_rng(0 if seed is None else seed)
    if sampler == "random":
        return rng.random((nb_design, dim))
    if sampler == "sobol":
        return qmc.Sobol(d=dim, scramble=False).random(nb_design)
    try:
        engine = qmc.Sobol(d=dim, scramble=True, rng=rng)
    except TypeError:  # SciPy < 1.15 calls the generator `seed`
        engine = qmc.Sobol(d=dim, scramble=True, seed=rng)
    return engine.random(nb_design)


def replicated_rows(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of :func:`replicated_design` ``(A, B)``, without building the design.

    Row ``r``: ``A[r]`` for ``r < N``; ``B[r − N]`` for ``N ≤ r < 2N``; otherwise
    ``C^(i)[j]`` with ``i, j = divmod(r − 2N, N)``: ``A[j]`` with column ``i`` taken from ``B[j]``.
    """
    n, d = a.shape
    rows = np.asarray(rows, dtype=np.int64)
    out = np.where((rows < n)[:, None], a[rows % n], b[rows % n])
    rest = rows >= 2 * n
    if rest.any():
        i, j = np.divmod(rows[rest] - 2 * n, n)
        block = a[j].copy()
        block[np.arange(len(j)), i] = b[j, i]
        out[rest] = block
    return out


def replicated_design(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``concat(A, B, C^(1), …, C^(d))``: ``N · (d + 2)`` rows of dimension ``d``.

    ``C^(i)`` is ``A`` with its column ``i`` replaced by ``B``'s (pick-freeze design).

    Example:
        >>> ab = sobol_design(32, 6)
        >>> design = replicated_design(ab[:, :3], ab[:, 3:])     # (32 * 5, 3)
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise xt.ParameterError(f"A and B must be two (N, d) arrays of one shape, got {a.shape} and {b.shape}")
    n, d = a.shape
    return replicated_rows(a, b, np.arange(n * (d + 2)))


def jansen_total_order(y_a: Any, y_c: Any, nb_design: int) -> Any:
    """Jansen's estimator of the total-order Sobol indices.

    Args:
        y_a: outputs on the design ``A``, shape ``(..., N)``.
        y_c: outputs on ``C^(1..d)``, shape ``(..., d · N)`` (``C^(i)`` blocks in order).
        nb_design: ``N``.

    Returns:
        ``(..., d)``: ``ST_i = Σ_j (y_A,j − y_C(i),j)² / (2 N V)`` with
        ``V = Σ_j (y_A,j − mean(y_A))² / (N − 1)`` (floored at 1e-12). Works on NumPy arrays
        and on framework tensors (returned in the same type).

    Example:
        >>> st = jansen_total_order(y[:n], y[2 * n:], n)
    """
    (ya, yc), restore = ep.astensors_(y_a, y_c)
    n = int(nb_design)
    yc = yc.reshape((*yc.shape[:-1], -1, n))                                   # (..., d, N)
    centred = ya - ya.mean(axis=-1, keepdims=True)
    var = ep.maximum((centred**2).sum(axis=-1, keepdims=True) / (n - 1), MIN_VARIANCE)
    st = ((ya.expand_dims(-2) - yc) ** 2).sum(axis=-1) / (2 * n * var)
    return restore(st)


class SobolAttribution(PerturbationMethod):
    """Sobol attribution method (Fel et al., 2021): total-order Sobol indices of grid cells.

    Every image is explained with the same ``nb_design · (grid_size² + 1)`` masks (forward
    passes per image: the design ``A`` and its ``d`` pick-freeze copies ``C^(i)``; ``B``'s
    outputs, which Jansen's estimator does not use, are not computed), streamed ``batch_size``
    at a time across images. Series are cut in ``grid_size`` segments of time and tabular rows
    in one cell per feature (``d`` cells: ``nb_design · (d + 1)`` passes).

    Args:
        grid_size: cells per side of the grid (``d = grid_size²`` variables).
        nb_design: ``N``, points of the Sobol design (a power of two), or ``"auto"``: designs
            of ``8, 16, 32, …`` points (each a prefix of the next, so no pass is repeated) up
            to ``max_design``, each image stopping once the indices moved by at most
            ``tolerance`` (relative to their spread) since the previous design; the points
            used per image come back in the extras as ``"nb_design"``.
        perturbation: ``"inpainting"`` (``x ⊙ M + (1 − M) · baseline``), ``"blurring"``
            (``x ⊙ M + (1 − M) ⊙ box_blur(x)``) or ``"amplitude"`` (``x ⊙ (1 + σ (M − 0.5))``).
        baseline: value masked pixels move to with ``inpainting``.
        blur_size: size of the box filter of ``blurring`` (10, as the official code).
        amplitude_sigma: ``σ`` of ``amplitude``, in ``[0, 2]`` (the factor stays ≥ 0).
        sampler: the design's points (:func:`sobol_design`): ``"sobol"`` (default:
            unscrambled, the paper's code and Xplique), ``"scrambled"`` (randomised QMC:
            unbiased, and seeds give independent estimates whose spread is an error bar) or
            ``"random"`` (plain Monte Carlo). The docs page gives the measurements behind the
            default.
        tolerance: with ``nb_design="auto"``, the stopping threshold (default 0.1).
        max_design: with ``nb_design="auto"``, the most design points (default 128).
        seed: seed of the ``scrambled`` and ``random`` samplers (``None``: a fresh design
            each call); the same seed gives the same map in every framework and for any
            ``batch_size``.

    Example:
        >>> maps = xt.SobolAttribution(model, grid_size=8, nb_design=32)(images, labels)
    """

    name = "sobol"
    input_kinds = ("image", "series", "tabular")
    # Not ``stochastic``: the default design is deterministic (``seed`` matters only with the
    # ``scrambled`` and ``random`` samplers).

    def passes_per_image(self) -> int | None:
        """For images (with ``nb_design="auto"``: at most); series use ``grid_size`` cells,
        tabular rows one per feature."""
        return self.sampling().maximum * (self.grid_size**2 + 1)

    def __init__(
        self,
        model: Any,
        *,
        grid_size: int = 8,
        nb_design: int | str = 32,
        perturbation: str = "inpainting",
        baseline: float = 0.0,
        blur_size: int = 10,
        amplitude_sigma: float = 1.0,
        sampler: str = "sobol",
        tolerance: float | None = None,
        max_design: int | None = None,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.grid_size = xe.positive_int("grid_size", grid_size)
        self.sampler = xe.one_of("sampler", sampler, SAMPLERS)
        self.seed = seed
        self.nb_design = nb_design if nb_design == xe.AUTO else xe.power_of_two("nb_design", nb_design)
        if self.nb_design != xe.AUTO and self.nb_design < 2:
            raise xt.ParameterError("nb_design must be at least 2 (the estimator needs a variance)")
        if self.nb_design == 2 and self.sampler == "sobol":
            # The unscrambled sequence's first two points are constant (all 0, all 0.5): A and B
            # agree on every cell, so every index would be exactly 0.
            raise xt.ParameterError(
                "nb_design=2 of the unscrambled Sobol sequence gives a map of zeros (its first two "
                "points are constant, so no cell is ever resampled): use nb_design >= 4, or "
                "sampler='scrambled' or 'random'"
            )
        self.perturbation, self.blur_size, self.amplitude_sigma, self.baseline = xe.perturbation_params(
            perturbation, blur_size, amplitude_sigma, baseline
        )
        self.tolerance = tolerance
        self.max_design = max_design
        self.sampling()  # validates tolerance and max_design against nb_design

    def sampling(self) -> xe.SampleSchedule:
        """The design sizes: fixed, or the doubling designs of ``nb_design="auto"``."""
        return xe.sample_schedule(
            "nb_design", self.nb_design, tolerance=self.tolerance, max_samples=self.max_design,
            first=AUTO_FIRST, default_tolerance=AUTO_TOLERANCE, default_maximum=AUTO_MAXIMUM,
            doubling=True, minimum=2, max_name="max_design",
        )

    def check_call(self, x: ep.Tensor) -> None:
        xe.cell_geometry(x, self.adapter.channel_axis, self.grid_size, self.name)
        check_perturbation(self.perturbation, x, self.name)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> ep.Tensor | xe.Explanation:
        adapter = self.adapter
        cells, positions = xe.cell_geometry(x, adapter.channel_axis, self.grid_size, self.name)
        schedule = self.sampling()
        d = int(np.prod(cells))
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        # nested: the design of N points is the first N points of the largest one
        ab = sobol_design(schedule.maximum, 2 * d, self.sampler, seed).astype(np.float32)
        reference = xe.reference_images(x, adapter.channel_axis, self.perturbation, self.baseline, self.blur_size)
        y_a: list[list[ep.Tensor]] = [[] for _ in range(x.shape[0])]     # (points,) per round
        y_c: list[list[ep.Tensor]] = [[] for _ in range(x.shape[0])]     # (d, points) per round
        previous: dict[int, ep.Tensor] = {}
        build = cell_mask_builder(
            positions, adapter.channel_axis, self.perturbation, self.amplitude_sigma,
            None if isinstance(reference, ep.Tensor) else reference,
        )

        def sample_round(round_: xe.SampleRound) -> None:
            lo, hi = round_.lo, round_.hi
            a, b = ab[lo:hi, :d], ab[lo:hi, d:]
            points = hi - lo
            per_item = points * (d + 1)  # A, then C^(1..d): B is not needed by Jansen
            scores = xe.PairScores(len(round_.active), per_item, adapter)
            todo = round_.chunks_of(per_item)
            desc = f"{self.name} ({hi} points)" if schedule.adaptive else self.name
            for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=desc):
                items = chunk.items
                block, j = np.divmod(chunk.samples, points)      # 0: A; i ≥ 1: C^(i)
                low = replicated_rows(a, b, np.where(block == 0, j, (block + 1) * points + j))
                low = low.reshape((-1, *cells))
                scores.put(chunk, cell_mask_scores(adapter, build, x, reference, low, targets, items))
            y = scores.result().reshape((len(round_.active), d + 1, points))  # A, C^(1..d) blocks
            for pos, item in enumerate(round_.active):
                y_a[item].append(y[pos, 0])
                y_c[item].append(y[pos, 1:])

        def indices(item: int) -> ep.Tensor:
            ya = y_a[item][0] if len(y_a[item]) == 1 else ep.concatenate(y_a[item], axis=0)
            yc = y_c[item][0] if len(y_c[item]) == 1 else ep.concatenate(y_c[item], axis=1)
            return jansen_total_order(ya, yc.reshape((-1,)), int(ya.shape[0]))          # (d,)

        def error(active: np.ndarray, n: int) -> np.ndarray:
            # Nested designs: the change since the previous (half-size) design bounds the error.
            now = {int(i): indices(int(i)) for i in active}
            errors = np.full(len(active), np.inf)
            if previous:
                est = ep.stack([now[int(i)] for i in active], axis=0)
                change = est - ep.stack([previous[int(i)] for i in active], axis=0)
                errors = xe.relative_error(est, change)
            previous.update(now)
            return errors

        used = schedule.run(x.shape[0], self.batch_size, sample_round, error)
        st = ep.stack([indices(i) for i in range(x.shape[0])], axis=0)             # (N_img, d)
        maps = xe.upsample_cells(st.reshape((x.shape[0], *cells)), positions, "bicubic")
        extras = xe.sample_counts(schedule, "nb_design", used)
        return xe.Explanation(maps, extras) if extras else maps


def cell_mask_builder(
    positions: tuple[int, ...], channel_axis: int, perturbation: str, amplitude_sigma: float,
    baseline: float | None,
) -> Callable[..., ep.Tensor]:
    """``build(rows, low[, reference])``: the inputs ``rows`` perturbed by the masks of the
    low-resolution cell values ``low`` ``(B, *cells)``, upsampled to ``positions``, towards
    ``baseline`` (a number), or towards the ``reference`` rows (blurred images) when
    ``baseline`` is ``None`` (and nothing, for ``amplitude``). A pure function of its tensors, so the adapter may compile it
    with the forward pass (``xe.built_scores``); Sobol and HSIC share it."""

    def build(rows: ep.Tensor, low: ep.Tensor, *reference: ep.Tensor) -> ep.Tensor:
        masks = xe.upsample_cells(low, positions)
        ref = reference[0] if reference else baseline
        return xe.perturb(rows, masks, channel_axis, perturbation, ref, amplitude_sigma)

    return build


def cell_mask_scores(
    adapter: xe.ModelAdapter, build: Callable[..., ep.Tensor], x: ep.Tensor, reference: ep.Tensor | float,
    low: np.ndarray, targets: Targets, items: np.ndarray,
) -> ep.Tensor:
    """The target scores ``(B,)`` of the images ``items`` of ``x`` perturbed by the cells
    ``low`` through :func:`cell_mask_builder`'s ``build``, as one built pass."""
    tensors = [adapter.broadcast_rows(x, items), adapter.from_numpy(x, low)]
    if isinstance(reference, ep.Tensor):
        tensors.append(adapter.broadcast_rows(reference, items))
    return xe.built_scores(adapter, build, *tensors, targets=targets, items=items)


def check_perturbation(perturbation: str, x: ep.Tensor, method: str) -> None:
    """Blurring is an image operation: tabular rows and series take inpainting or amplitude."""
    if perturbation == "blurring" and x.ndim != 4:
        raise xt.ParameterError(
            f"{method}: perturbation='blurring' blurs images; for inputs of shape {tuple(x.shape)} "
            "use 'inpainting' or 'amplitude'"
        )


Register = Callable[[str, type], None]


@xt.hookimpl
def register_methods(register: Register) -> None:
    register(SobolAttribution.name, SobolAttribution)
