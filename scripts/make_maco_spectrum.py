"""Compute the natural-image magnitude spectrum MACO optimises under: ``plugins/maco_spectrum.npy``.

Usage (from the repository root; needs scikit-learn and Pillow)::

    python scripts/make_maco_spectrum.py

Source images: the two photographs scikit-learn ships (``sklearn.datasets.load_sample_images``:
``china.jpg`` and ``flower.jpg``, 427×640, licensed for redistribution with scikit-learn). Only
their average spectrum is shipped, not the images.

What is computed, as MACO's official spectrum (Xplique's ``spectrum_decorrelated.npy``, which
averages ImageNet images): the magnitude ``|rfft2|`` of ``SIZE × SIZE`` crops, per channel, in
the *decorrelated* colour space that MACO's parametrisation maps back to RGB (``rgb = dec @ M``
with MACO's colour matrix ``M``, so ``dec = rgb @ M⁻¹``), averaged over crops at every position
on a regular grid of each image and of its mirror image. Stored as float16 ``(3, SIZE,
SIZE // 2 + 1)`` scaled to a maximum of 1 (only relative magnitudes matter: the image is
standardised after the inverse transform). The output is deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "plugins" / "maco_spectrum.npy"
SIZE = 256
STRIDE = 32

# MACO's colour recorrelation (Lucid's colour-correlation square root, column-normalised,
# transposed); kept equal to plugins/maco.py's COLOR_CORRELATION (checked by its tests).
COLOR_CORRELATION = np.array(
    [[0.56282854, 0.58447580, 0.58447580], [0.19482528, 0.0, -0.19482528], [0.04329450, -0.10823626, 0.06494176]]
)


def natural_spectrum(images: list[np.ndarray], size: int = SIZE, stride: int = STRIDE) -> np.ndarray:
    """Mean ``|rfft2|`` of the ``size × size`` crops of ``images`` (RGB in [0, 1]) and of their
    mirror images, in the decorrelated colour space, shape ``(3, size, size // 2 + 1)``."""
    decorrelate = np.linalg.inv(COLOR_CORRELATION)
    total = np.zeros((3, size, size // 2 + 1))
    count = 0
    for image in images:
        for picture in (image, image[:, ::-1]):
            dec = picture @ decorrelate
            for top in range(0, dec.shape[0] - size + 1, stride):
                for left in range(0, dec.shape[1] - size + 1, stride):
                    crop = dec[top : top + size, left : left + size].transpose(2, 0, 1)
                    total += np.abs(np.fft.rfft2(crop))
                    count += 1
    return total / count


def main() -> int:
    from sklearn.datasets import load_sample_images

    images = [np.asarray(img, dtype=np.float64) / 255.0 for img in load_sample_images().images]
    spectrum = natural_spectrum(images)
    spectrum = (spectrum / spectrum.max()).astype(np.float16)
    np.save(OUT, spectrum)
    print(f"wrote {OUT.relative_to(ROOT)}: shape {spectrum.shape}, {OUT.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
