"""Write the fixed inputs the peer-recording scripts read (run in the project's environment).

The side environments that record Xplique's numbers do not have xai-toolbox installed, so the
twin test CNN's weights (``xai_toolbox.testing.cnn_weights``, PyTorch layout), the images, the
labels and the explanations they score travel in one ``.npz``:

    python scripts/peers/make_inputs.py            # -> tests/data/peers/inputs.npz

Then, in the side environment (see scripts/peers/README.md):

    /work/peers/xplique-venv/bin/python scripts/peers/record_xplique_metrics.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xai_toolbox.testing import cnn_weights

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "peers" / "inputs.npz"
#: Weight seeds of the four "fold" models (MeGe); seed 0 is the model of every other metric.
MODEL_SEEDS = (0, 1, 2, 3)


def main() -> None:
    rng = np.random.default_rng(2024)
    arrays: dict[str, np.ndarray] = {}
    for seed in MODEL_SEEDS:
        for name, value in cnn_weights(seed).items():
            arrays[f"model{seed}/{name}"] = value
    arrays["images"] = rng.random((16, 3, 16, 16), dtype=np.float32)  # NCHW
    arrays["labels"] = rng.integers(0, 4, 16)
    arrays["explanations"] = rng.random((16, 16, 16), dtype=np.float32) ** 3  # uneven maps
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, **arrays)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
