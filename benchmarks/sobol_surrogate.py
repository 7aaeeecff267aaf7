"""Section c, variance-reduction attempts for Sobol: a linear surrogate as control variate, and rescalings.

``python -m benchmarks.sobol_surrogate --points 1024 --images 3`` (PyTorch, CPU; about 3 minutes
per image on 2 idle cores): on the benchmark ResNet (random weights, 64×64, 8×8 cells, the
``inpainting`` masks of :class:`~xai_toolbox.SobolAttribution` with baseline 0), the outputs of the
whole unscrambled design of ``--points`` points (its prefixes are the smaller designs), then for
each prefix ``N`` the correlation of the map with the full design's Jansen map, for

* **jansen**: the method's estimator, the mean of ``(y_A - y_C(i))² / 2``;
* **surrogate**: the same with a control variate. A linear model ``h(m) = c + w·m`` of the score
  in the cell values, fitted by least squares on the ``N (d + 1)`` evaluations, has known total
  indices (``w_i² / 12`` for uniform cells), so ``mean((Δy)² − (Δh)²) / 2 + w_i² / 12`` estimates
  the same quantity; it helps as far as the score is additive in the cells.

* **ratio**: ``Σ (Δy)² / Σ δ²`` with ``δ = a_i − b_i`` the cell's known change, times
  ``E[δ²] = 1/6``: removes the noise of ``δ`` when ``Δy ≈ g δ``;
* **slopes**: the squared slopes ``(Δy / δ)²`` weighted by ``E[δ² | a] = a² − a + 1/3``
  (exact for a score linear in the cell, whatever the other cells).

The score's share of variance that the linear model explains is printed per image. Nothing here
changes the method: it records whether this estimator would reach r = 0.99 in fewer passes
(``docs/benchmarks.md``, "Quality per forward pass").
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xai_toolbox.plugins.sobol import (
    MIN_VARIANCE,
    jansen_total_order,
    replicated_design,
    sobol_design,
)

from .models import resnet


def scores(model, image, masks: np.ndarray, target: int, grid: int, batch: int = 256) -> np.ndarray:  # noqa: ANN001
    """The target logit of ``image`` masked by each row of cell values (nearest upsampling)."""
    import torch

    size = image.shape[-1]
    out = []
    with torch.no_grad():
        for k in range(0, len(masks), batch):
            m = torch.from_numpy(masks[k : k + batch].reshape(-1, 1, grid, grid).astype(np.float32))
            m = m.repeat_interleave(size // grid, 2).repeat_interleave(size // grid, 3)
            out.append(model(image * m)[:, target])
    return torch.cat(out).double().numpy()


def _fit(a: np.ndarray, b: np.ndarray, y_a: np.ndarray, y_c: np.ndarray) -> np.ndarray:
    """``(c, w_1 … w_d)``: the least-squares linear model of the score on the ``N (d + 1)``
    evaluated rows (``A`` and the ``C^(i)``; ``B`` is not evaluated)."""
    n = len(a)
    full = replicated_design(a, b)
    rows = np.concatenate([full[:n], full[2 * n :]])
    values = np.concatenate([y_a, y_c.reshape(-1)])
    coef, *_ = np.linalg.lstsq(np.c_[np.ones(len(rows)), rows], values, rcond=None)
    return coef


def output_variance(y_a: np.ndarray) -> float:
    """The denominator of :func:`jansen_total_order`: the variance of ``y_A``, floored the same way."""
    return max(float(np.var(y_a, ddof=1)), MIN_VARIANCE)


def surrogate_indices(a: np.ndarray, b: np.ndarray, y_a: np.ndarray, y_c: np.ndarray) -> np.ndarray:
    """Jansen's total-order numerators with a fitted linear model as control variate (see the
    module docstring), divided by the same output variance as :func:`jansen_total_order`."""
    w = _fit(a, b, y_a, y_c)[1:]
    dy2 = (y_a[None] - y_c) ** 2
    dh2 = (w[:, None] * (a - b).T) ** 2
    variance = output_variance(y_a)
    return ((dy2 - dh2).mean(1) / 2 + w**2 / 12) / variance


def ratio_indices(a: np.ndarray, b: np.ndarray, y_a: np.ndarray, y_c: np.ndarray) -> np.ndarray:
    """Jansen's numerators rescaled by the design's own ``Σ δ²`` (see the module docstring).
    NaN for a cell whose ``δ`` are all 0 (the first unscrambled points of some columns agree)."""
    dy2 = ((y_a[None] - y_c) ** 2).sum(1)
    variance = output_variance(y_a)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dy2 / (((a - b).T ** 2).sum(1) * 6.0) / 2 / variance


def slope_indices(a: np.ndarray, b: np.ndarray, y_a: np.ndarray, y_c: np.ndarray) -> np.ndarray:
    """Squared slopes ``(Δy / δ)²`` weighted by ``E[δ² | a]`` (see the module docstring)."""
    delta2 = np.maximum((a - b).T ** 2, 1e-12)
    weight = a.T**2 - a.T + 1.0 / 3.0
    variance = output_variance(y_a)
    return ((y_a[None] - y_c) ** 2 / delta2 * weight).mean(1) / 2 / variance


def linear_share(a: np.ndarray, b: np.ndarray, y_a: np.ndarray, y_c: np.ndarray) -> float:
    """The share of the score's variance over the design ``A`` that the fitted linear model explains."""
    coef = _fit(a, b, y_a, y_c)
    return float(np.var(np.c_[np.ones(len(a)), a] @ coef) / np.var(y_a))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sobol_surrogate", description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=1024, help="the full design (a power of two): the reference")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    model = resnet("torch", size=args.size).eval()
    d = args.grid**2
    ab = sobol_design(args.points, 2 * d)
    a, b = ab[:, :d], ab[:, d:]
    rng = np.random.default_rng(0)
    prefixes = [n for n in (8, 16, 32, 64, 128, 256) if n < args.points]
    print("| image | linear share | N | passes | jansen r | surrogate r | ratio r | slopes r |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for index in range(args.images):
        image = torch.from_numpy(rng.random((1, 3, args.size, args.size), dtype=np.float32))
        with torch.no_grad():
            target = int(model(image).argmax())
        start = time.perf_counter()
        y_a = scores(model, image, a, target, args.grid)
        c_rows = replicated_design(a, b)[2 * args.points :]          # C^(1), ..., C^(d)
        y_c = scores(model, image, c_rows, target, args.grid).reshape(d, args.points)
        seconds = time.perf_counter() - start
        reference = jansen_total_order(y_a, y_c.reshape(-1), args.points)
        share = linear_share(a, b, y_a, y_c)
        for n in prefixes:
            plain = jansen_total_order(y_a[:n], y_c[:, :n].reshape(-1), n)
            cv = surrogate_indices(a[:n], b[:n], y_a[:n], y_c[:, :n])
            args_n = (a[:n], b[:n], y_a[:n], y_c[:, :n])
            r = [np.corrcoef(m, reference)[0, 1]
                 for m in (plain, cv, ratio_indices(*args_n), slope_indices(*args_n))]
            cells = " | ".join(f"{v:.3f}" for v in r)
            print(f"| {index} | {share:.2f} | {n} | {n * (d + 1)} | {cells} |", flush=True)
        print(f"<!-- image {index}: {args.points * (d + 1)} passes in {seconds:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
