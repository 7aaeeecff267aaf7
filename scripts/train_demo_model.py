"""Train the demo CNN and write the shipped weights, ``xai_toolbox/demo/weights.npz``.

Usage (from the repository root, CPU only, a few minutes on 2 cores)::

    python scripts/train_demo_model.py            # train, report, overwrite weights.npz
    python scripts/train_demo_model.py --dry-run  # train and report, write nothing

What it does, deterministically (same PyTorch/NumPy versions -> same weights):

* trains the PyTorch twin from :func:`xai_toolbox.demo.model.build_torch_model` on
  :func:`xai_toolbox.demo.data.make_shapes` images; every epoch draws a *fresh* set with seed
  ``DEMO_SEEDS.train + epoch``, so the model never sees an image twice and cannot memorise;
* He-initialised convolutions, Adam with a one-cycle learning-rate schedule, batches of 32,
  cross-entropy on the logits;
* reports accuracy on held-out images (seed ``DEMO_SEEDS.heldout``, never used in training);
* saves float32 arrays keyed by ``state_dict`` names (PyTorch layout; the Keras twin converts
  them at load time).

The test suite requires >= 95 % held-out accuracy in both frameworks
(``tests/test_demo_model.py``); the defaults below give a comfortable margin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Run from a checkout without installing the package: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai_toolbox.demo.data import CLASS_NAMES, make_shapes, to_channels_first  # noqa: E402
from xai_toolbox.demo.model import (  # noqa: E402
    DEMO_IMAGE_SIZE,
    DEMO_SEEDS,
    WEIGHTS_PATH,
    build_torch_model,
)

TORCH_SEED = 0  # initial weights and batch order
EPOCHS = 20
IMAGES_PER_EPOCH = 5_000
BATCH_SIZE = 32  # small batches: the fastest images/second on a 2-core CPU for this model
MAX_LR = 4e-3
WARMUP_FRACTION = 0.2  # of the one-cycle schedule spent raising the learning rate
HELDOUT_IMAGES = 2_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--images-per-epoch", type=int, default=IMAGES_PER_EPOCH)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--dry-run", action="store_true", help="do not write the weights")
    return parser.parse_args(argv)


def as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """NHWC NumPy images and labels -> NCHW float tensor and int64 tensor."""
    return torch.from_numpy(to_channels_first(images)), torch.from_numpy(labels)


def init_weights(model: nn.Module) -> None:
    """He-normal convolution kernels, zero biases.

    PyTorch's default (uniform, gain for leaky ReLU with slope sqrt(5)) starts the features
    so small that, after global average pooling, training sits at chance level for several
    epochs; He init, made for ReLU networks, shortens that plateau several-fold.
    """
    for name, module in model.named_children():
        if name.startswith("conv"):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def train(model: nn.Module, epochs: int, images_per_epoch: int) -> None:
    """Train in place on a fresh synthetic set per epoch."""
    steps_per_epoch = -(-images_per_epoch // BATCH_SIZE)
    # Only trainable tensors: the fixed input normalisation stays as built.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=MAX_LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=MAX_LR,
        total_steps=epochs * steps_per_epoch,
        pct_start=WARMUP_FRACTION,
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        data = make_shapes(images_per_epoch, seed=DEMO_SEEDS.train + epoch, size=DEMO_IMAGE_SIZE)
        images, labels = as_tensors(data.images, data.labels)
        order = torch.randperm(len(labels))
        model.train()
        total_loss, correct = 0.0, 0
        for start in range(0, len(labels), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            logits = model(images[batch])
            loss = loss_fn(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == labels[batch]).sum())
        print(
            f"epoch {epoch + 1:2d}/{epochs}  loss {total_loss / len(labels):.4f}  "
            f"train acc {correct / len(labels):.4f}  ({time.perf_counter() - epoch_start:.1f} s)",
            flush=True,
        )


@torch.no_grad()
def evaluate(model: nn.Module, n: int, seed: int) -> tuple[float, np.ndarray]:
    """Overall and per-class accuracy on ``n`` fresh images from ``seed``."""
    model.eval()
    data = make_shapes(n, seed=seed, size=DEMO_IMAGE_SIZE)
    images, _ = as_tensors(data.images, data.labels)
    predicted = torch.cat([model(chunk) for chunk in images.split(500)]).argmax(1).numpy()
    hits = predicted == data.labels
    per_class = np.array([hits[data.labels == c].mean() for c in range(len(CLASS_NAMES))])
    return float(hits.mean()), per_class


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the state_dict as float32 NumPy arrays (compressed npz, PyTorch layout)."""
    arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(TORCH_SEED)
    torch.use_deterministic_algorithms(True)

    model = build_torch_model(len(CLASS_NAMES))
    init_weights(model)
    started = time.perf_counter()
    train(model, args.epochs, args.images_per_epoch)
    elapsed = time.perf_counter() - started

    accuracy, per_class = evaluate(model, HELDOUT_IMAGES, DEMO_SEEDS.heldout)
    print(f"training time: {elapsed:.1f} s")
    print(f"held-out accuracy (seed {DEMO_SEEDS.heldout}, {HELDOUT_IMAGES} images): {accuracy:.4f}")
    for name, acc in zip(CLASS_NAMES, per_class, strict=True):
        print(f"  {name:>8s}: {acc:.4f}")
    if not args.dry_run:
        save_weights(model, args.output)
        print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
