"""The demo CNN, built identically in PyTorch and Keras 3, with shipped trained weights.

Architecture (about 24 k parameters, fast on a CPU)::

    normalize (fixed per-channel affine: 4 * (x - 0.5), i.e. [0, 1] -> [-2, 2])
    conv1 (3x3, 3->16, same) -> relu1 -> pool1 (max 2x2)
    conv2 (3x3, 16->32, same) -> relu2 -> pool2 (max 2x2)
    conv3 (3x3, 32->64, same) -> relu3 -> gap (global average pool) -> fc (64->classes, logits)

Both twins use the same layer names, so a layer addressed by name (``"conv3"``, ``"relu3"``)
is the same computation in either framework. PyTorch takes ``(N, 3, H, W)``, Keras
``(N, H, W, 3)``; inputs are images in ``[0, 1]`` as produced by
:func:`xai_toolbox.demo.data.make_shapes`. Every operation has an exact twin (3x3
convolution with padding 1 == ``padding="same"`` at stride 1, ``MaxPool2d(2)`` ==
``MaxPooling2D(2)``, mean over H and W == ``GlobalAveragePooling2D``), so with the same
weights the two models agree to float32 rounding.

``normalize`` is a frozen depthwise 1x1 convolution (``Conv2d(3, 3, 1, groups=3)`` /
``Conv2D(3, 1, groups=3)``, not trainable): both frameworks express it with standard layers,
and it ships with the other weights. It is there because training on raw ``[0, 1]`` inputs
stalled at chance level in our runs, while centred inputs trained; a likely reason is that
zero padding of raw inputs frames every image in black, whereas centred inputs are padded
with mid-grey.

The weights ship once, in PyTorch layout (``weights.npz``, keyed by ``state_dict`` names);
:func:`copy_state_dict_to_keras` converts them when the Keras twin is loaded. They are
produced by ``scripts/train_demo_model.py``.

The builders live in :mod:`xai_toolbox.backends.demo_models` (framework code) and are
re-exported here; :func:`load_demo_model` asks the framework's registered test-model builder
(architecture ``"demo"``), so a framework plugin can serve the demo too. PyTorch and
TensorFlow are imported inside the functions, so this module (and :mod:`xai_toolbox.demo.data`)
can be imported with neither installed.

Example:
    >>> import torch
    >>> from xai_toolbox.demo import DEMO_SEEDS, load_demo_model, make_shapes, to_channels_first
    >>> data = make_shapes(4, seed=DEMO_SEEDS.heldout)
    >>> model = load_demo_model("torch")
    >>> logits = model(torch.from_numpy(to_channels_first(data.images)))
    >>> tuple(logits.shape)
    (4, 5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xai_toolbox.backends import framework_info
from xai_toolbox.backends.demo_models import (
    DEMO_IMAGE_SIZE,
    build_keras_model,
    build_torch_model,
    copy_state_dict_to_keras,
    copy_torch_weights_to_keras,
)
from xai_toolbox.errors import ParameterError

__all__ = [
    "DEMO_IMAGE_SIZE",
    "DEMO_SEEDS",
    "WEIGHTS_PATH",
    "DemoSeeds",
    "build_keras_model",
    "build_torch_model",
    "copy_state_dict_to_keras",
    "copy_torch_weights_to_keras",
    "load_demo_model",
    "load_demo_weights",
]


class DemoSeeds(NamedTuple):
    """Seeds of :func:`~xai_toolbox.demo.data.make_shapes` used around the demo model.

    Attributes:
        train: base seed of the training data; epoch ``e`` of the training script draws a
            fresh set with seed ``train + e``. Seeds ``train`` to ``train + 999`` are
            reserved for training.
        heldout: seed of the held-out evaluation data, never used in training. Tests and
            the training script's final report measure accuracy on it.
    """

    train: int
    heldout: int


DEMO_SEEDS = DemoSeeds(train=1_000, heldout=7)
"""The fixed training seed and the held-out seed (outside the reserved training range)."""

WEIGHTS_PATH = Path(__file__).with_name("weights.npz")
"""The shipped trained weights: float32 arrays keyed by PyTorch ``state_dict`` names."""


def load_demo_weights(path: str | Path = WEIGHTS_PATH) -> dict[str, np.ndarray]:
    """Read the shipped demo weights: float32 arrays keyed by PyTorch ``state_dict`` names.

    Example:
        >>> sorted(load_demo_weights())[:2]
        ['conv1.bias', 'conv1.weight']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"demo weights not found at {path}; regenerate them with "
            "`python scripts/train_demo_model.py`"
        )
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def load_demo_model(framework: str) -> Any:
    """Build the demo CNN for ``framework`` and load the shipped trained weights.

    Args:
        framework: ``"torch"`` / ``"pytorch"`` for an ``nn.Module`` in eval mode taking
            ``(N, 3, 64, 64)``, or ``"tf"`` / ``"tensorflow"`` / ``"keras"`` for a
            ``keras.Model`` taking ``(N, 64, 64, 3)``. Both return logits ``(N, 5)`` for the
            classes :data:`~xai_toolbox.demo.data.CLASS_NAMES`.

    Raises:
        ParameterError: (a ``ValueError``) for an unknown framework name.

    Example:
        >>> model = load_demo_model("tf")
        >>> model.output_shape
        (None, 5)
    """
    info = framework_info(str(framework).strip())  # ParameterError for an unknown name
    if info.build_test_model is None:
        raise ParameterError(f"the demo model is not built for {info.display_name} models")
    return info.build_test_model("demo", weights=load_demo_weights())
