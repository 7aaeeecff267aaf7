"""Our methods over segments against Captum's, on the same settings: speed and agreement.

Usage (from the repository root, PyTorch and Captum installed)::

    python scripts/bench_segment_methods.py                  # demo model, 4 images, 8x8 grid
    python scripts/bench_segment_methods.py --repeats 7 --threads 2 --batch-size 64

Both sides explain the same images for the same targets with the same segments (Captum's
``feature_mask`` = our grid), baseline 0, the same number of samples and the same number of
model inputs per forward pass (Captum's ``perturbations_per_eval`` × the images it batches
together). LIME and KernelSHAP run Captum one image at a time, as its documentation
recommends; LIME uses Captum's defaults on our side too (input-space cosine kernel of width
1, ``Lasso(alpha=0.01)``). Calls are interleaved (ours, Captum's, ours, ...) so a change of
machine load affects both; the table gives the median of each and their ratio. Agreement is
exact where the draws can be shared (Feature Ablation): the random methods draw their own
coalitions here, so their maps agree only statistically (the parity tests share the draws).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import xai_toolbox as xt  # noqa: E402
from xai_toolbox import extend as xe  # noqa: E402
from xai_toolbox.testing import as_numpy  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--grid-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=500, help="LIME/KernelSHAP coalitions per image")
    parser.add_argument("--permutations", type=int, default=25, help="Shapley Value Sampling")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["feature_ablation", "shapley_value_sampling", "kernel_shap", "lime"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import captum.attr as ca
    import torch
    from captum._utils.models.linear_model import SkLearnLasso

    from xai_toolbox.demo import DEMO_SEEDS, load_demo_model, make_shapes
    from xai_toolbox.demo.data import to_channels_first

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_demo_model("torch")
    data = make_shapes(args.images, DEMO_SEEDS.heldout)
    x = torch.from_numpy(to_channels_first(data.images).astype(np.float32))
    labels = torch.from_numpy(np.asarray(data.labels))
    n, g, b = x.shape[0], args.grid_size, args.batch_size
    mask = torch.from_numpy(xe.grid_labels(tuple(x.shape[2:]), g))[None, None]

    def one_at_a_time(make: Any, **kw: Any) -> Any:
        def run() -> Any:
            return torch.cat([
                make().attribute(x[i : i + 1], target=int(labels[i]), feature_mask=mask, baselines=0.0,
                                 perturbations_per_eval=b, **kw)
                for i in range(n)
            ])
        return run

    cases: dict[str, tuple[dict[str, Any], Any]] = {
        "feature_ablation": ({}, lambda: ca.FeatureAblation(model).attribute(
            x, target=labels, feature_mask=mask, baselines=0.0, perturbations_per_eval=max(1, b // n))),
        "shapley_value_sampling": ({"nb_samples": args.permutations}, lambda: ca.ShapleyValueSampling(model).attribute(
            x, target=labels, feature_mask=mask, baselines=0.0, n_samples=args.permutations,
            perturbations_per_eval=max(1, b // n))),
        "kernel_shap": ({"nb_samples": args.samples}, one_at_a_time(lambda: ca.KernelShap(model), n_samples=args.samples)),
        "lime": (
            {"nb_samples": args.samples, "distance_space": "input", "kernel_width": 1.0, "regressor": "lasso", "alpha": 0.01},
            one_at_a_time(lambda: ca.Lime(model, interpretable_model=SkLearnLasso(alpha=0.01)), n_samples=args.samples),
        ),
    }
    print(f"demo model, {n} images {tuple(x.shape[1:])}, {g}x{g} grid, batch {b}, {args.threads} threads, "
          f"{args.repeats} interleaved repeats")
    print(f"{'method':24s} {'ours (s)':>9s} {'captum (s)':>10s} {'captum/ours':>11s} {'agreement':>10s}")
    for name in args.methods:
        params, theirs = cases[name]
        method = xt.method(name, model, grid_size=g, batch_size=b, **params)

        def ours(method: Any = method) -> Any:
            return method(x, labels)

        a, c = ours(), theirs()  # warm-up, and the maps
        agreement = float(np.abs(as_numpy(a) - c[:, 0].numpy()).max() / np.abs(c[:, 0].numpy()).max())
        times: dict[str, list[float]] = {"ours": [], "captum": []}
        for _ in range(args.repeats):
            for side, fn in (("ours", ours), ("captum", theirs)):
                start = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - start)
        t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["captum"])
        print(f"{name:24s} {t_ours:9.3f} {t_theirs:10.3f} {t_theirs / t_ours:11.2f} {agreement:10.2e}", flush=True)


if __name__ == "__main__":
    main()
