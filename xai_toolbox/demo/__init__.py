"""Demo material: a synthetic shapes data set with ground-truth masks and a trained twin CNN.

* :mod:`xai_toolbox.demo.data` — :func:`make_shapes`, a deterministic NumPy-only generator of
  labelled images with object masks (imports no deep-learning framework).
* :mod:`xai_toolbox.demo.model` — the demo CNN in PyTorch and Keras 3 with the same layer
  names, the shipped weights (:func:`load_demo_model`), and
  :func:`copy_torch_weights_to_keras` for building other twin models.

Example:
    >>> from xai_toolbox.demo import CLASS_NAMES, DEMO_SEEDS, load_demo_model, make_shapes
    >>> data = make_shapes(8, seed=DEMO_SEEDS.heldout)
    >>> model = load_demo_model("tf")
    >>> logits = model(data.images, training=False)
    >>> [CLASS_NAMES[i] for i in logits.numpy().argmax(axis=1)] == [
    ...     CLASS_NAMES[i] for i in data.labels
    ... ]
    True
"""

from xai_toolbox.demo.data import CLASS_NAMES, ShapesData, make_shapes, to_channels_first
from xai_toolbox.demo.model import (
    DEMO_IMAGE_SIZE,
    DEMO_SEEDS,
    WEIGHTS_PATH,
    DemoSeeds,
    build_keras_model,
    build_torch_model,
    copy_state_dict_to_keras,
    copy_torch_weights_to_keras,
    load_demo_model,
    load_demo_weights,
)

__all__ = [
    "CLASS_NAMES",
    "DEMO_IMAGE_SIZE",
    "DEMO_SEEDS",
    "WEIGHTS_PATH",
    "DemoSeeds",
    "ShapesData",
    "build_keras_model",
    "build_torch_model",
    "copy_state_dict_to_keras",
    "copy_torch_weights_to_keras",
    "load_demo_model",
    "load_demo_weights",
    "make_shapes",
    "to_channels_first",
]
