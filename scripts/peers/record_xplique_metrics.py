"""Record Xplique's metric numbers on fixed inputs, for the parity tests (side environment only).

Run with the Xplique side environment (never a dependency of xai-toolbox):

    /work/peers/xplique-venv/bin/python scripts/peers/record_xplique_metrics.py

It reads ``tests/data/peers/inputs.npz`` (written by ``make_inputs.py``), rebuilds the test
CNN in Keras from its NumPy weights, runs Xplique 2.0.2's Complexity, Sparseness,
AverageStability, RandomLogitMetric and MeGe with Xplique's Saliency, and writes
``tests/data/peers/xplique_metrics.json``.

Xplique draws its randomness with TensorFlow's global generator; to compare numbers, the
random parts are replaced by draws whose recipe the toolbox documents (the test then runs the
toolbox with the same seed):

* AverageStability: the neighbour offsets ``noisy_masks`` become
  ``default_rng(seed).uniform(0, radius, (nb_samples, C, H, W))`` moved to channels-last;
* RandomLogitMetric: the off-class draw becomes ``r = default_rng(seed).integers(0, K − 1, N)``,
  ``r + 1`` where ``r ≥ y``;
* MeGe: ``learning_algorithm`` hands back the four stored models in fold order (no training).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import xplique  # noqa: E402
from xplique.attributions import Saliency  # noqa: E402
from xplique.metrics import (  # noqa: E402
    AverageStability,
    Complexity,
    MeGe,
    RandomLogitMetric,
    Sparseness,
)

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "peers"
STABILITY = {"radius": 0.1, "nb_samples": 5, "seed": 3}
RANDOM_LOGIT_SEED = 42


def keras_cnn(weights: dict[str, np.ndarray], size: int = 16) -> tf.keras.Model:
    """The toolbox's test CNN (conv1 → relu → maxpool → conv2 → relu → GAP → fc) in Keras."""
    keras = tf.keras
    inputs = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    h = keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(h))
    for name in ("conv1", "conv2"):
        model.get_layer(name).set_weights([weights[f"{name}.weight"].transpose(2, 3, 1, 0), weights[f"{name}.bias"]])
    model.get_layer("fc").set_weights([weights["fc.weight"].T, weights["fc.bias"]])
    return model


def main() -> None:
    inputs = np.load(DATA / "inputs.npz")
    models = [
        keras_cnn({k.split("/", 1)[1]: inputs[k] for k in inputs.files if k.startswith(f"model{s}/")})
        for s in range(4)
    ]
    images = np.ascontiguousarray(inputs["images"].transpose(0, 2, 3, 1))  # NHWC
    labels = inputs["labels"]
    one_hot = tf.one_hot(labels, 4).numpy()
    model = models[0]
    out: dict[str, object] = {"xplique": xplique.__version__, "tensorflow": tf.__version__}

    saliency = Saliency(model)
    out["saliency"] = np.asarray(saliency(images, one_hot)).reshape(len(images), 16, 16).tolist()

    maps = inputs["explanations"]
    out["complexity"] = np.asarray(Complexity().detailed_evaluate(maps)).tolist()
    out["sparseness"] = np.asarray(Sparseness().detailed_evaluate(maps)).tolist()

    # AverageStability, per input (its evaluate averages these)
    metric = AverageStability(model, images, one_hot, batch_size=64, radius=STABILITY["radius"],
                              nb_samples=STABILITY["nb_samples"])
    rng = np.random.default_rng(STABILITY["seed"])
    offsets = rng.uniform(0.0, STABILITY["radius"], (STABILITY["nb_samples"], 3, 16, 16))
    metric.noisy_masks = tf.constant(offsets.transpose(0, 2, 3, 1), tf.float32)
    per_input = []
    for i in range(len(images)):
        single = AverageStability(model, images[i : i + 1], one_hot[i : i + 1], radius=STABILITY["radius"],
                                  nb_samples=STABILITY["nb_samples"])
        single.noisy_masks = metric.noisy_masks
        per_input.append(single.evaluate(saliency))
    out["average_stability"] = {**STABILITY, "scores": per_input, "mean": metric.evaluate(saliency)}

    # RandomLogit, per input, with the documented off-class draw
    metric = RandomLogitMetric(model, images, one_hot, batch_size=64, seed=RANDOM_LOGIT_SEED)
    r = np.random.default_rng(RANDOM_LOGIT_SEED).integers(0, 3, len(labels))
    off = np.where(r >= labels, r + 1, r)
    metric._get_perturbed_context = lambda x, t, e: (x, tf.one_hot(off, 4), e)
    scores = metric._batch_evaluate(tf.constant(images), tf.constant(one_hot), saliency)
    out["random_logit"] = {"seed": RANDOM_LOGIT_SEED, "off_classes": off.tolist(),
                           "scores": np.asarray(scores).tolist()}

    # MeGe: labels are model 0's predictions (so pairs with model 0 always count)
    mege_labels = np.argmax(model.predict(images, verbose=0), -1)
    handed = iter(models)
    mege = MeGe(lambda *_: next(handed), images, tf.one_hot(mege_labels, 4).numpy(), k_splits=4)
    value, reco = mege.evaluate(Saliency)
    out["mege"] = {"labels": mege_labels.tolist(), "mege": float(value), "reco": float(reco)}

    # ReCo on given distance sets (the models above separate nothing: ReCo 0)
    rng = np.random.default_rng(5)
    s_eq, s_ne = rng.uniform(0.0, 0.6, 37), rng.uniform(0.3, 1.0, 23)
    handed = iter(models)
    mege = MeGe(lambda *_: next(handed), images, tf.one_hot(mege_labels, 4).numpy(), k_splits=4)
    mege._pairwise_distances = lambda *_: (s_eq, s_ne)
    value, reco = mege.evaluate(Saliency)
    out["reco_sets"] = {"s_equal": s_eq.tolist(), "s_different": s_ne.tolist(), "mege": float(value),
                        "reco": float(reco)}

    path = DATA / "xplique_metrics.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
