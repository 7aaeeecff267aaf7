"""Render the pictures of the CRAFT and MACO documentation pages from the embedded demo model.

Usage (from the repository root)::

    python scripts/make_concept_images.py                 # PyTorch twin, writes docs/img/craft_*.png, maco*.png
    python scripts/make_concept_images.py --framework tf  # the Keras twin gives the same pictures
    python scripts/make_concept_images.py --only craft    # or --only maco

Writes:

* ``craft_crops.png``: for the demo's "triangle" class, the 5 most important concepts and the
  8 crops holding the most of each (CRAFT at ``relu3`` on 16 held-out triangles);
* ``craft_importances.png``: their importances (Sobol total indices);
* ``craft_maps.png``: where the 3 most important concepts lie in four of the triangles;
* ``maco.png``: MACO's visualisation of each class of the demo model (its log-probability, at
  the demo's scale: tests/test_maco.py's settings with more steps), with and without the
  transparency map;
* ``maco_concept.png``: MACO's visualisation of the most important triangle concept (a direction
  in ``relu3``).

The pictures are deterministic (seeded, no timestamp in the PNGs).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import xai_toolbox as xt  # noqa: E402
from xai_toolbox import plot_concepts  # noqa: E402
from xai_toolbox.demo import (  # noqa: E402
    CLASS_NAMES,
    DEMO_SEEDS,
    load_demo_model,
    make_shapes,
    to_channels_first,
)

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
PNG_METADATA = {"Software": None}
CLASS = CLASS_NAMES.index("triangle")
#: The settings of the pictures (also quoted on the pages).
CRAFT_PARAMS = {"layer": "relu3", "number_of_concepts": 8, "patch_size": 32, "nb_crops": 8, "nb_design": 32, "batch_size": 256}
MACO_PARAMS = {"nb_steps": 128, "image_size": 96, "nb_crops": 8, "values_range": (0.0, 1.0), "batch_size": 64}
#: The class pictures: the canvas is the model's input, crops the canvas's size, the noise
#: Xplique's relative to a (0, 1) range (see docs/concepts/maco.md, "The demo model").
MACO_CLASS_PARAMS = {**MACO_PARAMS, "image_size": 64, "box_size": 1.0, "noise": 0.04}


def save(fig: matplotlib.figure.Figure, name: str, out: Path) -> None:
    fig.savefig(out / name, dpi=110, metadata=PNG_METADATA)
    print(f"wrote {out / name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=["torch", "tf"], default="torch")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", choices=["craft", "maco"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_demo_model(args.framework)
    data = make_shapes(80, seed=DEMO_SEEDS.heldout)
    images = data.images if args.framework == "tf" else to_channels_first(data.images)
    chosen = np.flatnonzero(data.labels == CLASS)
    with warnings.catch_warnings():  # scikit-learn's iteration cap, on these small problems
        warnings.filterwarnings("ignore", message="Maximum number of iterations")
        concepts = xt.concepts("craft", model, **CRAFT_PARAMS)(images[chosen], CLASS)
    if args.only != "maco":
        save(concepts.plot_crops(top=5, crops=8), "craft_crops.png", args.out)
        save(concepts.plot_importances(), "craft_importances.png", args.out)
        save(concepts.plot_attribution_maps(images[chosen[:4]], top=3), "craft_maps.png", args.out)
    if args.only != "craft":  # the concept picture needs the concepts above
        shape = images.shape[1:]
        classes = xt.featurevis("maco", model, **MACO_CLASS_PARAMS)
        visualizations = [classes(xt.Objective.log_probability(c), shape) for c in range(len(CLASS_NAMES))]
        adapter = xt.adapt(model)  # the model's verdict on each picture, in its title
        logits = np.concatenate([adapter.to_numpy(adapter.forward(adapter.to_model(v.model_input))) for v in visualizations])
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        titles = [f"{name} (p = {probabilities[c, c]:.2f})" for c, name in enumerate(CLASS_NAMES)]
        save(plot_concepts.featurevis_grid(visualizations, titles=titles, both=True), "maco.png", args.out)
        best = int(concepts.order[0])
        vis = xt.featurevis("maco", model, **MACO_PARAMS)(xt.Objective.direction("relu3", concepts.bank[best]), shape)
        save(vis.plot(title=f"triangle concept {best} (relu3)"), "maco_concept.png", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
