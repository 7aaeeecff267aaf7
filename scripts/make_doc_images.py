"""Render the documentation's pictures from the embedded demo model into ``docs/img/``.

Usage (from the repository root)::

    python scripts/make_doc_images.py                 # PyTorch twin, writes docs/img/*.png
    python scripts/make_doc_images.py --framework tf  # the Keras twin gives the same pictures
    python scripts/make_doc_images.py --methods lime  # only docs/img/lime.png
    python scripts/make_doc_images.py --metrics road_morf sparseness   # only their pictures

Writes, for five held-out images (one per class, seed ``DEMO_SEEDS.heldout``) explained for
their true class with the demo's settings (``DEMO_PARAMS`` in ``xai_toolbox/demo_job.py``):

* ``<method>.png`` for every registered method: the inputs on top, the method's heatmaps below;
* ``overview.png``: every method side by side, one row per image;
* ``deletion.png`` and ``insertion.png``: the mean curve of each method over 16 held-out
  images (seed ``DEMO_SEEDS.heldout + 1``), scored with the demo's metric settings;
* ``metric_<metric>.png`` for every registered metric (``--metrics NAME`` for some): the
  metric's mean with its 95 % interval for each of the demo's default methods, best first,
  on 8 held-out images (seed ``DEMO_SEEDS.heldout + 1``), with the demo's metric settings.

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
    parser.add_argument("--skip-metrics", action="store_true", help="no metric_<NAME>.png pictures")
    parser.add_argument(
        "--metrics", nargs="*", metavar="NAME",
        help="only write metric_<NAME>.png for these metrics (no names: every registered metric)",
    )
    return parser.parse_args(argv)


#: The methods compared on the metric pictures: gradients, CAMs and a perturbation method, all
#: fast at the demo's settings (the stability metrics re-explain every image many times).
METRIC_PICTURE_METHODS = ("saliency", "gradient_input", "gradcam", "gradcampp", "occlusion")


def metric_pictures(args: argparse.Namespace, model: object, settings: dict) -> list[str]:
    """``metric_<name>.png``: each metric's mean and 95 % interval per method, best first."""
    names = args.metrics or xt.list_metrics()
    data = make_shapes(8, seed=DEMO_SEEDS.heldout + 1)
    x = to_model_layout(data.images, args.framework)
    methods = [m for m in METRIC_PICTURE_METHODS if m in xt.list_methods()]
    table = xt.evaluate(
        model, x, data.labels, methods=methods, metrics=names, masks=data.masks.astype(np.float32),
        method_params={m: settings["methods"].get(m, {}) for m in methods},
        metric_params={m: settings["metrics"].get(m, {}) for m in names},
        batch_size=DEMO_BATCH_SIZE, keep_going=True, echo=print,
    )
    written = []
    for name in names:
        results = {m: table.results[m][name] for m in methods if name in table.results.get(m, {})}
        if not results:
            print(f"  metric_{name}.png skipped: {sorted(v for k, v in table.failures.items() if k.endswith('/' + name))[:1]}")
            continue
        fig = xt.plot.scores(results, title=f"{name} on 8 held-out images of the demo model")
        fig.savefig(args.out / f"metric_{name}.png", dpi=90, metadata=PNG_METADATA)
        written.append(f"metric_{name}.png")
        print(f"  metric_{name}.png", flush=True)
    return written


def method_figure(images: np.ndarray, maps: np.ndarray, titles: list[str], method: str) -> matplotlib.figure.Figure:
    """Inputs on the top row, the method's overlays below, and the overlays' colourbar (what
    the colours mean: signed maps on a diverging scale centred on zero) at the right."""
    from matplotlib.figure import Figure

    scale = xt.plot.map_scale(maps)
    overlays = xt.plot.overlay(images, maps, channels_first=False)
    n = len(images)
    fig = Figure(figsize=(1.6 * n + 0.6, 3.5), layout="constrained")
    axes = fig.subplots(2, n + 1, squeeze=False, width_ratios=[1.0] * n + [0.08])
    for i in range(n):
        for row, picture in enumerate((images[i], overlays[i])):
            ax = axes[row, i]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(titles[i], fontsize=9)
    axes[0, 0].set_ylabel("input", fontsize=9)
    axes[1, 0].set_ylabel(method, fontsize=9)
    axes[0, n].set_axis_off()
    bar = axes[1, n]
    low = -1.0 if scale.diverging else 0.0
    ramp = np.linspace(1.0, low, 128, dtype=np.float32)[:, None]
    bar.imshow(scale.colours(ramp), aspect="auto", extent=(0.0, 1.0, low, 1.0))
    bar.set_xticks([])
    ticks = [-1.0, 0.0, 1.0] if scale.diverging else [0.0, 1.0]
    bar.yaxis.tick_right()
    bar.set_yticks(ticks, labels=list(scale.tick_labels()), fontsize=7)
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
    if args.metrics is not None:  # only the metric pictures
        written = metric_pictures(args, model, settings)
        print(f"wrote {len(written)} pictures to {args.out}: {', '.join(written)}")
        return 0
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
        fig = xt.plot.curves(results, figsize=(9.5, 4.4), title=f"{curve_metric} (16 held-out images)")
        fig.savefig(args.out / f"{curve_metric}.png", dpi=90, metadata=PNG_METADATA)
        written.append(f"{curve_metric}.png")
    if not args.skip_metrics:
        written += metric_pictures(args, model, settings)
    print(f"wrote {len(written)} pictures to {args.out}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
