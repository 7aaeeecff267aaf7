"""Xplique side of the side-by-side benchmark: runs in Xplique's own environment, never here.

Started by :mod:`benchmarks.xplique` as ``XPLIQUE_PYTHON -m benchmarks.xplique_worker --data
DIR --framework torch|tf --threads N`` from the repository root. It imports only NumPy,
TensorFlow, Xplique (and PyTorch for ``torch``) and :mod:`benchmarks.models`: xai-toolbox is
not installed there. It builds the benchmark ResNet from ``DIR/weights.npz`` (the weights the
parent's model has), reads the images, labels and explanations from ``DIR/inputs.npz``, says
``{"ready": ...}`` on stdout, then answers one JSON command per line:

* ``{"op": "run", "case": NAME, "params": {...}, "save": PATH|null}`` — build Xplique's
  explainer or metric and run it once on all images; replies ``{"seconds": ...}`` (the time
  of construction and call: Xplique's metrics run base predictions in their constructor) and
  saves the maps or scores to ``PATH`` (``.npy``) when asked;
* ``{"op": "quit"}``.

A PyTorch model goes through Xplique's ``TorchWrapper`` (``requires_grad=False``: no autograd
graph on forward-only passes, the faster setting for black-box methods), which hands the
model NHWC arrays permuted to NCHW, i.e. channels-last memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def build(framework: str, data: Path, threads: int) -> tuple[Any, dict[str, Any]]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from benchmarks.models import resnet_from_weights

    spec = json.loads((data / "spec.json").read_text())
    weights = dict(np.load(data / "weights.npz"))
    shape = {k: spec[k] for k in ("size", "width", "classes")}
    versions = {"tensorflow": tf.__version__}
    if framework == "torch":
        import torch
        from xplique.wrappers import TorchWrapper

        torch.set_num_threads(threads)
        versions["torch"] = torch.__version__
        model = TorchWrapper(resnet_from_weights("torch", weights, **shape).eval(), device="cpu", requires_grad=False)
    else:
        model = resnet_from_weights("tf", weights, **shape)
    return model, versions


def run(model: Any, case: str, params: dict[str, Any], inputs: dict[str, np.ndarray]) -> tuple[float, Any]:
    import xplique.attributions as xa
    import xplique.metrics as xm

    x, y, maps = inputs["images_nhwc"], inputs["one_hot"], inputs["explanations"]
    start = time.perf_counter()
    if case == "rise":
        out = xa.Rise(model, **params)(x, y)
    elif case == "sobol":
        out = xa.SobolAttributionMethod(model, **params)(x, y)
    elif case == "hsic":
        out = xa.HsicAttributionMethod(model, **params)(x, y)
    elif case == "occlusion":
        out = xa.Occlusion(model, **params)(x, y)
    elif case == "mufidelity":
        out = xm.MuFidelity(model, x, y, **params).evaluate(maps)
    elif case == "deletion":
        out = xm.Deletion(model, x, y, **params).evaluate(maps)
    elif case == "insertion":
        out = xm.Insertion(model, x, y, **params).evaluate(maps)
    else:
        raise ValueError(f"unknown case {case!r}")
    value = np.asarray(out)
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--framework", choices=("torch", "tf"), required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    data = Path(args.data)
    import xplique

    model, versions = build(args.framework, data, args.threads)
    inputs = dict(np.load(data / "inputs.npz"))
    print(json.dumps({"ready": True, "xplique": xplique.__version__, **versions}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        try:
            seconds, value = run(model, command["case"], command.get("params", {}), inputs)
            if command.get("save"):
                np.save(command["save"], value)
            reply: dict[str, Any] = {"seconds": seconds}
        except Exception as exc:  # reported to the parent, which records the case as an error
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
