"""Render the pictures of the task and transformer pages into ``docs/img/``.

Usage (from the repository root)::

    python scripts/make_task_images.py

Writes ``task_regression.png``, ``task_multilabel.png``, ``task_segmentation.png``,
``task_detection.png`` and ``transformers.png`` from the embedded demo model, the demo's
shapes images and the tiny test models of ``tests/`` (a ViT, a patch-token model, a 1 × 1
convolution segmenter, a two-box detector). Deterministic: re-running changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import xai_toolbox as xt  # noqa: E402
from xai_toolbox.demo import CLASS_NAMES, DEMO_SEEDS, load_demo_model, make_shapes  # noqa: E402
from xai_toolbox.testing import linear_model  # noqa: E402

OUT = ROOT / "docs" / "img"


def save(fig: plt.Figure, name: str) -> None:
    fig.tight_layout()
    fig.savefig(OUT / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print("wrote", OUT / name)


def regression() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 8)).astype(np.float32)
    x = rng.random((1, 8), dtype=np.float32)
    model = linear_model("torch", w)
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.6), sharey=True)
    for ax, (title, score) in zip(axes, [
        ("output 0: Regression(index=0)", xt.scores.Regression(index=0)),
        ("y₀ − y₁: Regression(direction=[1, −1])", xt.scores.Regression(direction=[1, -1])),
    ], strict=True):
        maps = xt.IntegratedGradients(model, score_fn=score)(x)[0]
        ax.bar(range(8), maps, color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("feature")
    axes[0].set_ylabel("Integrated Gradients")
    save(fig, "task_regression.png")


def multilabel() -> None:
    data = make_shapes(3, seed=DEMO_SEEDS.heldout)
    model = load_demo_model("torch")
    x = np.ascontiguousarray(data.images.transpose(0, 3, 1, 2))
    labels = [[0, 2], [0, 2], [0, 2]]
    maps = xt.GradCAM(model, score_fn=xt.scores.MultiLabel())(x, labels)
    fig, axes = plt.subplots(2, 3, figsize=(6, 4))
    for i in range(3):
        axes[0, i].imshow(data.images[i])
        axes[0, i].set_title(CLASS_NAMES[data.labels[i]], fontsize=9)
        axes[1, i].imshow(maps[i], cmap="jet")
    axes[1, 0].set_ylabel(f"σ({CLASS_NAMES[0]}) + σ({CLASS_NAMES[2]})", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    save(fig, "task_multilabel.png")


def segmentation() -> None:
    from test_tasks import segmenter

    data = make_shapes(1, seed=DEMO_SEEDS.heldout)
    image = np.ascontiguousarray(data.images.transpose(0, 3, 1, 2))
    # class k = colour channel k of each pixel (a 1 × 1 convolution), explained over a region
    model = segmenter("torch", np.eye(3, dtype=np.float32))
    region = np.zeros((1, 64, 64), bool)
    region[:, 16:48, 16:48] = True
    targets = xt.scores.class_region(region, 0, 3)
    rise = xt.Rise(model, nb_samples=500, grid_size=8, score_fn=xt.scores.Segmentation(), seed=0)(image, targets)
    saliency = xt.Saliency(model, score_fn=xt.scores.Segmentation())(image, targets)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    axes[0].imshow(data.images[0])
    axes[0].contour(region[0], colors="white", linewidths=1)
    axes[0].set_title("image, region (red class)", fontsize=9)
    axes[1].imshow(saliency[0], cmap="jet")
    axes[1].set_title("Saliency of the region's mean", fontsize=9)
    axes[2].imshow(rise[0], cmap="jet")
    axes[2].set_title("RISE of the region's mean", fontsize=9)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    save(fig, "task_segmentation.png")


def detection() -> None:
    from test_tasks import row, toy_detector

    images = np.full((1, 1, 8, 8), 0.6, np.float32)
    reference = np.array([row([0, 0, 4, 4], 1, [0, 1])], np.float32)
    model = toy_detector(torch)
    rise = xt.Rise(model, nb_samples=1000, grid_size=4, score_fn=xt.scores.Detection(), seed=0)(images, reference)
    fig, axes = plt.subplots(1, 2, figsize=(5.5, 2.8))
    for ax, (title, img) in zip(axes, [("reference box", images[0, 0]), ("D-RISE", rise[0])], strict=True):
        ax.imshow(img, cmap="gray" if title == "reference box" else "jet", vmin=None)
        ax.add_patch(plt.Rectangle((-0.5, -0.5), 4, 4, fill=False, color="lime", linewidth=2))
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    save(fig, "task_detection.png")


def transformers() -> None:
    from _vit_models import torch_vit, vit_weights
    from test_transformers import patch_model

    image = np.zeros((1, 3, 16, 16), np.float32)
    image[:, :, 4:8, 8:12] = 1.0
    token_map = xt.GradCAM(patch_model("torch"), layer="tokens")(image, [0])
    vit = torch_vit(vit_weights(0))
    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    method = xt.GradCAM(vit)
    vit_map = method(x, [0])
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    axes[0].imshow(image[0].transpose(1, 2, 0))
    axes[0].set_title("input: patch (1, 2) lit", fontsize=9)
    axes[1].imshow(token_map[0], cmap="jet")
    axes[1].set_title("Grad-CAM on the tokens", fontsize=9)
    axes[2].imshow(vit_map[0], cmap="jet")
    axes[2].set_title(f"tiny ViT, default layer\n{method.layer_}", fontsize=9)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    save(fig, "transformers.png")


if __name__ == "__main__":
    torch.manual_seed(0)
    regression()
    multilabel()
    segmentation()
    detection()
    transformers()
