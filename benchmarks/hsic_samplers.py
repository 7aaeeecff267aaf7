"""Section c for HSIC: the Latin hypercube (the paper's masks) against strength-3 orthogonal arrays.

``python -m benchmarks.hsic_samplers --images 3`` (PyTorch, CPU; about 90 s per image on 2 idle
cores): on the benchmark ResNet (random weights, width 32, random images) and the trained demo CNN
(held-out shapes), both at 64×64 with 8×8 cells and the default ``inpainting`` masks with 0, the
HSIC map of :class:`~xai_toolbox.HsicAttribution` (median-heuristic bandwidth) from the first
``n`` masks of each sampler and seed, against a reference from 16× the default 1536 masks.

The reference averages two maps of 24 576 masks each, one per sampler (standardised), so that it
favours neither; their correlation is printed: a sampler that estimated another quantity would
show there. *passes for r = 0.99* extrapolates each image's and seed's r at 1536 masks by the
Monte-Carlo law (noise variance ∝ 1/n) and gives the median (``inf`` where r ≤ 0). The Deletion
and Insertion areas are those of the method's own maps from the largest design, averaged over the
images and seeds, on the logits and with the RISE paper's protocol (probabilities, insertion onto
a blurred copy) (``docs/benchmarks.md``, "Quality per forward pass").
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xai_toolbox.plugins.hsic import hsic_design, hsic_scores, output_bandwidth

from .config import Config
from .quality import _passes_for, quality_models
from .sobol_surrogate import scores

SAMPLERS = ("lhs", "orthogonal")


def hsic_map(masks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The method's estimator on given masks and scores (median-heuristic bandwidth)."""
    z = (masks - masks.mean(axis=0)).astype(np.float64)
    return np.asarray(hsic_scores(z, y, output_bandwidth(y, "median_heuristic")))


def fidelity(model: object, images: object, targets: list[int], sampler: str, seeds: int, masks: int) -> np.ndarray:
    """Mean Deletion and Insertion areas of the method's own maps from ``masks`` masks of
    ``sampler``, over the images and seeds: ``(deletion, insertion)`` on the logits (the metrics'
    defaults), then with the RISE paper's protocol (probabilities; insertion onto a blurred copy)."""
    import xai_toolbox as xt

    metrics = [
        xt.Deletion(model, progress=False), xt.Insertion(model, progress=False),
        xt.Deletion(model, activation="softmax", progress=False),
        xt.Insertion(model, activation="softmax", baseline="blur", progress=False),
    ]
    found = []
    for seed in range(seeds):
        maps = xt.HsicAttribution(model, nb_design=masks, sampler=sampler, seed=seed, progress=False)(images, targets)
        found.append([m(images, targets, maps).mean for m in metrics])
    return np.mean(found, axis=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hsic_samplers", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--masks", type=int, default=1536,
                   help="the largest design (its quarter and half are shown too); the reference has 16x")
    args = p.parse_args(argv)
    prefixes = (args.masks // 4, args.masks // 2, args.masks)
    import torch

    torch.set_num_threads(2)
    grid, d = 8, 64
    for name, model, images, labels in quality_models(Config(framework="torch"), args.images):
        found: dict[str, list[list[float]]] = {s: [] for s in SAMPLERS}
        agreement = []
        start = time.perf_counter()
        targets = labels.tolist()
        areas = {s: fidelity(model, images, targets, s, args.seeds, args.masks) for s in SAMPLERS}
        for index, target in enumerate(targets):
            image = images[index : index + 1]
            refs = []
            for k, sampler in enumerate(SAMPLERS):
                masks = hsic_design(16 * args.masks, d, sampler, seed=1000 + k)
                refs.append(hsic_map(masks, scores(model, image, masks, target, grid)))
            agreement.append(float(np.corrcoef(*refs)[0, 1]))
            reference = sum(r / r.std() for r in refs)
            for sampler in SAMPLERS:
                for seed in range(args.seeds):
                    masks = hsic_design(max(prefixes), d, sampler, seed=seed)
                    y = scores(model, image, masks, target, grid)
                    found[sampler].append(
                        [float(np.corrcoef(hsic_map(masks[:n], y[:n]), reference)[0, 1]) for n in prefixes]
                    )
        seconds = time.perf_counter() - start
        print(f"\n**{name}** — {args.images} images × {args.seeds} seeds; the two references correlate "
              f"{min(agreement):.3f}–{max(agreement):.3f}\n")
        head = " | ".join(f"r at {n} (mean, worst)" for n in prefixes)
        print(f"| sampler | {head} | passes for r = 0.99 | deletion ↓ (logit, prob.) | insertion ↑ (logit, prob.) |")
        print("|---|" + "---:|" * (len(prefixes) + 3))
        for sampler in SAMPLERS:
            r = np.array(found[sampler])
            cells = " | ".join(f"{r[:, j].mean():.3f}, {r[:, j].min():.3f}" for j in range(len(prefixes)))
            needs = [_passes_for(v, prefixes[-1]) for v in r[:, -1]]
            need = float(np.median([np.inf if v is None else v for v in needs]))
            dl, ins, dl_p, ins_p = areas[sampler]
            print(f"| {sampler} | {cells} | {need:.0f} | {dl:.3f}, {dl_p:.3f} | {ins:.3f}, {ins_p:.3f} |")
        print(f"<!-- {seconds:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
