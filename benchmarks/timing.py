"""Timing: one call timed to the end of its device work, and interleaved paired repeats.

:func:`paired` alternates which of two calls goes first and reports the median of the paired
ratios with their quartiles: pairing cancels slow drifts of a shared machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from .config import Config


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def paired(
    ours: Callable[[], Any], reference: Callable[[], Any], sync: Callable[[], None], cfg: Config, first_s: float
) -> dict[str, Any]:
    """Interleaved timed repeats of ``ours`` and ``reference``; medians and the paired ratio."""
    repeats = cfg.repeats
    if first_s < cfg.short_call_s:
        repeats = max(repeats, cfg.max_repeats)
    t_ours, t_ref = [], []
    for r in range(repeats):
        if r % 2 == 0:
            t_ours.append(timed(ours, sync))
            t_ref.append(timed(reference, sync))
        else:
            t_ref.append(timed(reference, sync))
            t_ours.append(timed(ours, sync))
    ratios = [a / b for a, b in zip(t_ours, t_ref, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "repeats": repeats,
        "times_s": t_ours,
        "reference_times_s": t_ref,
        "median_s": statistics.median(t_ours),
        "reference_median_s": statistics.median(t_ref),
        "ratio": statistics.median(ratios),
        # How much the paired ratio moves between repeats: the noise a difference must beat.
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "ratio_of_medians": statistics.median(t_ours) / statistics.median(t_ref),
    }
