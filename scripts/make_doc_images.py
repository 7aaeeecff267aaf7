"""Render the documentation's pictures from the embedded demo model into ``docs/img/``.

Usage (from the repository root)::

    python scripts/make_doc_images.py                 # PyTorch twin, writes docs/img/*.png
    python scripts/make_doc_images.py --framework tf  # the Keras twin gives the same pictures
    python scripts/make_doc_images.py --methods lime  # only docs/img/lime.png

Writes, for five held-out images (one per class, seed ``DEMO_SEEDS.heldout``) explained for
their true class with the demo's settings (``DEMO_PARAMS`` in ``xai_toolbox/demo_job.py``):

* ``<method>.png`` for every registered method: the inputs on top, the method's heatmaps below;
* ``overview.png``: every method side by side, one row per image;
* ``deletion.png`` and ``insertion.png``: the mean curve of each method over 16 held-out
  images (seed ``DEMO_SEEDS.heldout + 1``), scored with the demo's metric settings.

The pictures are deterministic (seeded methods, fixed images, no timestamp in the PNGs), so
re-running the script after a change shows up in ``git diff`` only where a picture changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# Run from a checkout without installing the package: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import xai_toolbox as xt  # noqa: E402
from xai_toolbox.demo import CLASS_NAMES, DEMO_SEEDS, load_demo_model, make_shapes  # noqa: E402
from xai_toolbox.demo_job import DEMO_BATCH_SIZE, demo_settings  # noqa: E402
from xai_toolbox.io import to_model_layout  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
PNG_METADATA = {"Software": None}  # no matplotlib version stamp: stable bytes across runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=["torch", "tf"], default="torch")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--methods", nargs="+", metavar="NAME",
        help="only write <NAME>.png for these methods (no overview or curves)",
    )
    return parser.parse_args(argv)


def method_figure(images: np.ndarray, maps: np.ndarray, titles: list[str], method: str) -> matplotlib.figure.Figure:
    """Inputs on the top row, the method's overlays below."""
    from matplotlib.figure import Figure

    overlays = xt.plot.overlay(images, maps, alpha=0.5, channels_first=False)
    n = len(images)
    fig = Figure(figsize=(1.6 * n, 3.5), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        for row, picture in enumerate((images[i], overlays[i])):
            ax = axes[row, i]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(titles[i], fontsize=9)
    axes[0, 0].set_ylabel("input", fontsize=9)
    axes[1, 0].set_ylabel(method, fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_shapes(len(CLASS_NAMES), seed=DEMO_SEEDS.heldout)  # one image per class
    order = np.argsort(data.labels, kind="stable")
    images, labels = data.images[order], data.labels[order]
    titles = [data.class_names[int(k)] for k in labels]
    model = load_demo_model(args.framework)
    x = to_model_layout(images, args.framework)
    settings = demo_settings()

    written: list[str] = []
    maps: dict[str, np.ndarray] = {}
    methods = [m for m in settings["methods"] if m in xt.list_methods()]
    methods += [m for m in xt.list_methods() if m not in methods]
    if args.methods:  # one method's page picture, e.g. after adding a method
        methods = list(args.methods)
    for method in methods:
        params = {"batch_size": DEMO_BATCH_SIZE, **settings["methods"].get(method, {})}
        maps[method] = xt.plot.to_numpy(xt.method(method, model, **params)(x, labels))
        fig = method_figure(images, maps[method], titles, method)
        fig.savefig(args.out / f"{method}.png", dpi=90, metadata=PNG_METADATA)
        written.append(f"{method}.png")
        print(f"  {method}.png", flush=True)
    if args.methods:
        return 0

    fig = xt.plot.grid(images, maps, image_titles=titles, cell_size=1.3)
    fig.savefig(args.out / "overview.png", dpi=90, metadata=PNG_METADATA)
    written.append("overview.png")

    # Curves averaged over more images than the pictures show: five are too few to be smooth.
    more = make_shapes(16, seed=DEMO_SEEDS.heldout + 1)
    x_more = to_model_layout(more.images, args.framework)
    maps_more = {}
    for method in methods:
        params = {"batch_size": DEMO_BATCH_SIZE, **settings["methods"].get(method, {})}
        maps_more[method] = xt.method(method, model, **params)(x_more, more.labels)
    for curve_metric in ("deletion", "insertion"):
        if curve_metric not in xt.list_metrics():
            continue
        params = {"batch_size": DEMO_BATCH_SIZE, **settings["metrics"].get(curve_metric, {})}
        metric = xt.metric(curve_metric, model, **params)
        results = {m: metric(x_more, more.labels, maps_more[m]) for m in methods}
        fig = xt.plot.curves(results, figsize=(7.5, 4.0), title=f"{curve_metric} (16 held-out images)")
        fig.savefig(args.out / f"{curve_metric}.png", dpi=90, metadata=PNG_METADATA)
        written.append(f"{curve_metric}.png")
    print(f"wrote {len(written)} pictures to {args.out}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
