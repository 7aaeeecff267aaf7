"""Adaptive sampling: draw samples in rounds and stop each image when its estimate is precise.

A sampling method (RISE, Sobol, HSIC, MuFidelity) averages the model's scores over random or
quasi-random perturbations. With a fixed number of samples, one image's map may still be half
noise while another's settled long before. With ``nb_samples="auto"`` the samples come in
rounds that end at fixed *checkpoints* (``256, 384, 512, 768, 1024, 1536, …``: powers of two
and 1.5× powers of two, or powers of two only for nested Sobol designs); at each checkpoint the
method estimates the standard error of each image's result from the samples so far and stops
the images whose **relative error** is at most ``tolerance``. The others go on to the next
checkpoint, up to a maximum.

* The checkpoints do not depend on ``batch_size`` and each image's decision only on its own
  samples, so a seed gives the same result for any ``batch_size``; and the result at the
  checkpoint where an image stopped *is* the fixed-size result at that number of samples
  (the rounds only split the same sums).
* Within a round, the (image, sample) pairs of the images still running are streamed
  ``batch_size`` at a time across images (:class:`SampleRound`), as :func:`chunks` does.
* One host read per round (the errors), none per chunk.

The relative error of a map (:func:`relative_error`) is the root mean square of the per-position
standard errors over the spatial spread (standard deviation over positions) of the map. If the
map is the truth plus independent noise of that size, its correlation with the truth is about
``1 / sqrt(1 + tolerance²)`` (0.995 for 0.1, 0.99 for 0.14). Metrics with one score per image
(MuFidelity) use the standard error of the score itself (an absolute tolerance).

Example:
    >>> schedule = sample_schedule("nb_samples", "auto", tolerance=0.1, max_samples=None,
    ...                            first=256, default_tolerance=0.1, default_maximum=8192)
    >>> schedule.checkpoints[:4]
    [256, 384, 512, 768]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import eagerpy as ep
import numpy as np

from . import _validation as v
from ._streaming import Chunk, chunks
from .errors import ParameterError

#: The value of a sample count that asks for adaptive sampling.
AUTO = "auto"


def checkpoints(first: int, maximum: int, *, doubling: bool = False) -> list[int]:
    """Sample counts at which an adaptive method looks at its estimate: from ``first`` up to
    ``maximum`` (included as the last), powers of two and 1.5× powers of two (about √2 apart),
    or powers of two only with ``doubling`` (nested Sobol designs).

    Example:
        >>> checkpoints(256, 2000)
        [256, 384, 512, 768, 1024, 1536, 2000]
        >>> checkpoints(8, 64, doubling=True)
        [8, 16, 32, 64]
    """
    first, maximum = int(first), int(maximum)
    if maximum <= first:
        return [maximum]
    found: list[int] = []
    power = 1
    while power <= maximum:
        for value in (power,) if doubling or power < 2 else (power, 3 * power // 2):
            if first <= value < maximum:
                found.append(value)
        power *= 2
    found = sorted(set(found))
    return [*found, maximum]


@dataclass(frozen=True)
class SampleChunk:
    """A chunk of one round: (image, sample) pairs of the images still running.

    ``items`` and ``samples`` are global (image index in the call, sample index within the
    image); ``start``/``stop``/``size``/``runs()`` are positions within the round, so the
    accumulators :class:`~xai_toolbox.extend.ItemSums` and
    :class:`~xai_toolbox.extend.PairScores` sized for the round take the chunk as they take a
    :class:`~xai_toolbox.extend.Chunk`.

    Example:
        >>> chunk.items, chunk.samples        # which image and which sample each pair is
    """

    local: Chunk
    active: np.ndarray
    lo: int

    @property
    def start(self) -> int:
        return self.local.start

    @property
    def stop(self) -> int:
        return self.local.stop

    @property
    def size(self) -> int:
        return self.local.size

    @property
    def items(self) -> np.ndarray:
        """Image index (in the call) of each pair."""
        return self.active[self.local.items]

    @property
    def samples(self) -> np.ndarray:
        """Sample index (within its image) of each pair."""
        return self.lo + self.local.samples

    def runs(self) -> Iterator[tuple[int, int, int]]:
        """``(position in the round's images, lo, hi)``, as :meth:`Chunk.runs`."""
        return self.local.runs()


@dataclass(frozen=True)
class SampleRound:
    """Samples ``[lo, hi)`` of the images ``active`` (indices in the call), in chunks of
    ``batch_size`` pairs across images.

    Example:
        >>> for chunk in round_.chunks:
        ...     scores.put(chunk, score_of(chunk.items, chunk.samples))
    """

    active: np.ndarray
    lo: int
    hi: int
    batch_size: int

    @property
    def chunks(self) -> list[SampleChunk]:
        """The round's pairs: samples ``lo .. hi`` of each active image."""
        todo = chunks(len(self.active), self.hi - self.lo, self.batch_size)
        return [SampleChunk(c, self.active, self.lo) for c in todo]

    def chunks_of(self, count: int) -> list[SampleChunk]:
        """``count`` pairs per active image, numbered ``0 .. count`` (for a method that makes
        several model inputs per sample: Sobol's ``d + 1`` rows per design point).

        Example:
            >>> todo = round_.chunks_of((round_.hi - round_.lo) * (d + 2))
        """
        return [SampleChunk(c, self.active, 0) for c in chunks(len(self.active), count, self.batch_size)]

    def __len__(self) -> int:
        return -(-len(self.active) * (self.hi - self.lo) // self.batch_size)


@dataclass(frozen=True)
class SampleSchedule:
    """How many samples a method draws: a fixed number, or rounds up to ``checkpoints[-1]``
    that stop each image once its error is at most ``tolerance`` (see the module docs).

    Example:
        >>> SampleSchedule.fixed(4000).checkpoints
        [4000]
    """

    checkpoints: list[int]
    tolerance: float | None = None
    adaptive: bool = field(default=False)

    @classmethod
    def fixed(cls, n: int) -> SampleSchedule:
        return cls([int(n)])

    @property
    def maximum(self) -> int:
        """The most samples an image can take (what the workload check counts)."""
        return self.checkpoints[-1]

    def run(
        self,
        n_items: int,
        batch_size: int,
        sample_round: Callable[[SampleRound], None],
        error: Callable[[np.ndarray, int], np.ndarray],
    ) -> np.ndarray:
        """Draw the samples, round by round; returns the samples each image used ``(n_items,)``.

        ``sample_round(round)`` runs and accumulates the pairs of one round;
        ``error(active, n)`` returns the error of each active image's estimate from its first
        ``n`` samples (called at every checkpoint but the last, adaptive schedules only).
        """
        used = np.zeros(n_items, dtype=np.int64)
        active = np.arange(n_items)
        lo = 0
        for hi in self.checkpoints:
            sample_round(SampleRound(active, lo, hi, batch_size))
            used[active] = hi
            if hi == self.maximum or not self.adaptive:
                break
            errors = np.asarray(error(active, hi), dtype=np.float64)
            assert self.tolerance is not None
            active = active[~(errors <= self.tolerance)]  # NaN errors keep sampling
            if not len(active):
                break
            lo = hi
        return used


def sample_count(name: str, value: object, *, minimum: int = 1) -> int | str:
    """A sample count: a positive integer (at least ``minimum``) or ``"auto"``.

    Example:
        >>> sample_count("nb_samples", "auto")
        'auto'
    """
    if isinstance(value, str):
        if value == AUTO:
            return AUTO
        raise ParameterError(f"{name} must be a positive integer or 'auto', got {value!r}")
    count = v.positive_int(name, value)
    if count < minimum:
        raise ParameterError(f"{name} must be at least {minimum} (or 'auto'), got {count}")
    return count


def sample_schedule(
    name: str,
    value: object,
    *,
    tolerance: object,
    max_samples: object,
    first: int,
    default_tolerance: float,
    default_maximum: int,
    doubling: bool = False,
    minimum: int = 1,
    max_name: str = "max_samples",
) -> SampleSchedule:
    """The :class:`SampleSchedule` of a method's sample-count parameter ``name``.

    ``value``: a count (fixed) or ``"auto"`` (adaptive: checkpoints from ``first`` up to
    ``max_samples``, default ``default_maximum``, stopping at ``tolerance``, default
    ``default_tolerance``). ``tolerance`` and ``max_samples`` (named ``max_name``) must be
    ``None`` for a fixed count (they would be ignored). With ``doubling`` the counts are
    powers of two. Raises :class:`~xai_toolbox.errors.ParameterError` naming the parameter.

    Example:
        >>> sample_schedule("nb_samples", 500, tolerance=None, max_samples=None, first=256,
        ...                 default_tolerance=0.1, default_maximum=8192).checkpoints
        [500]
    """
    count = sample_count(name, value, minimum=minimum)
    if count != AUTO:
        given = [n for n, val in (("tolerance", tolerance), (max_name, max_samples)) if val is not None]
        if given:
            raise ParameterError(
                f"{' and '.join(given)} only apply to {name}='auto' (adaptive sampling); "
                f"with {name}={count} leave {'them' if len(given) > 1 else 'it'} unset"
            )
        return SampleSchedule.fixed(int(count))
    tol = default_tolerance if tolerance is None else v.in_range("tolerance", tolerance, 0.0, math.inf)
    top = default_maximum if max_samples is None else v.positive_int(max_name, max_samples)
    if top < max(first, minimum):
        raise ParameterError(f"{max_name} must be at least {max(first, minimum)} (the first checkpoint), got {top}")
    if doubling and top & (top - 1):
        raise ParameterError(f"{max_name} must be a power of two, got {top}")
    return SampleSchedule(checkpoints(first, top, doubling=doubling), tol, adaptive=True)


def relative_error(estimate: ep.Tensor, standard_error: ep.Tensor) -> np.ndarray:
    """Per row: the root mean square of ``standard_error`` over the spread of ``estimate``
    (the standard deviation of its values), both ``(N, ...)``; one host read.

    ``0`` where both are constant, ``inf`` where only the estimate is.

    Example:
        >>> relative_error(maps, se)           # (N,) NumPy
    """
    n = estimate.shape[0]
    flat_e = estimate.reshape((n, -1))
    flat_s = standard_error.reshape((n, -1))
    spread = ((flat_e - flat_e.mean(axis=1, keepdims=True)) ** 2).mean(axis=1).sqrt()
    noise = (flat_s**2).mean(axis=1).sqrt()
    values = ep.stack([noise, spread], axis=1).numpy().astype(np.float64)
    noise_h, spread_h = values[:, 0], values[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = noise_h / spread_h
    return np.where(spread_h > 0, ratio, np.where(noise_h > 0, np.inf, 0.0))


def correlation_standard_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Standard error of the Pearson correlation of each row pair of ``a`` and ``b`` ``(N, S)``,
    distribution-free (delta method on the standardised moments, no normality assumed):

        Var(r) ≈ [ r²/4 · (m40 + 2 m22 + m04) − r (m31 + m13) + m22 ] / S

    with ``m_jk`` the mean of ``u^j v^k`` for the standardised rows ``u``, ``v``. A constant
    row gives 0 (its correlation is defined as 0 and stays so).

    Example:
        >>> correlation_standard_error(attributions, drops)       # (N,)
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    s = a.shape[1]
    ca = a - a.mean(axis=1, keepdims=True)
    cb = b - b.mean(axis=1, keepdims=True)
    sa = np.sqrt((ca**2).mean(axis=1, keepdims=True))
    sb = np.sqrt((cb**2).mean(axis=1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        u, w = ca / sa, cb / sb
        r = (u * w).mean(axis=1)
        m22 = (u**2 * w**2).mean(axis=1)
        var = (r**2 / 4 * ((u**4).mean(axis=1) + 2 * m22 + (w**4).mean(axis=1))
               - r * ((u**3 * w).mean(axis=1) + (u * w**3).mean(axis=1)) + m22) / s
    se = np.sqrt(np.maximum(var, 0.0))
    constant = (sa[:, 0] == 0) | (sb[:, 0] == 0)
    return np.where(constant, 0.0, np.where(np.isfinite(se), se, np.nan))


def sample_counts(schedule: SampleSchedule, name: str, used: np.ndarray) -> dict[str, np.ndarray]:
    """The extras an adaptive call returns: ``{name: samples used per image}`` (empty for a
    fixed schedule, where every image used the same, given number).

    Example:
        >>> return Explanation(maps, sample_counts(schedule, "nb_samples", used))
    """
    return {name: used} if schedule.adaptive else {}


__all__: Sequence[str] = (
    "AUTO",
    "SampleChunk",
    "SampleRound",
    "SampleSchedule",
    "checkpoints",
    "correlation_standard_error",
    "relative_error",
    "sample_count",
    "sample_counts",
    "sample_schedule",
)
