"""Scaffolding shared by several test modules (not collected: the name has no ``test_``)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from xai_toolbox.testing import cnn

#: Small parameters so every method runs in well under a second on 16×16 images; methods or
#: metrics not listed run with their defaults.
FAST_METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"nb_samples": 3},
    "rise": {"nb_samples": 16, "grid_size": 4},
    "sobol": {"grid_size": 4, "nb_design": 8},
    "hsic": {"grid_size": 4, "nb_design": 16},
    "occlusion": {"patch_size": 8, "stride": 8},
    "opticam": {"max_iter": 3},
    "lime": {"nb_samples": 16, "grid_size": 4},
    "kernel_shap": {"nb_samples": 16, "grid_size": 4},
    "shapley_value_sampling": {"nb_samples": 1, "grid_size": 4},
    "feature_ablation": {"grid_size": 4},
}
FAST_METRIC_PARAMS: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 4},
    "insertion": {"steps": 4},
    "mufidelity": {"grid_size": 4, "nb_samples": 8},
    "randomization": {"method": "saliency"},
}


class CountedModel:
    """The test CNN with a count of its forward passes (bad input must cause none)."""

    def __init__(self, framework: str) -> None:
        self.calls = 0
        self.model = cnn(framework)
        if framework == "torch":
            self.model.register_forward_pre_hook(lambda *_: self._count())
        else:
            layer = self.model.get_layer("conv1")
            original = layer.call

            def call(*args: Any, **kwargs: Any) -> Any:
                self._count()
                return original(*args, **kwargs)

            layer.call = call

    def _count(self) -> None:
        self.calls += 1


def outputs_of(model: Any, framework: str, batch_nchw: np.ndarray) -> np.ndarray:
    """The model's raw outputs on NumPy NCHW images (the metric references' only framework call)."""
    batch = np.ascontiguousarray(batch_nchw, dtype=np.float32)
    if framework == "torch":
        import torch

        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy().astype(np.float64)
    return np.asarray(model(batch.transpose(0, 2, 3, 1), training=False), dtype=np.float64)


def install_dist(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """Make ``dist`` importable and discoverable: a dist-info with entry points on sys.path."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[xai_toolbox]\n" + textwrap.dedent(entry_points))
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


def relative_error(a: Any, b: Any) -> float:
    """``max |a − b|`` relative to ``max |b|`` (maps compared up to float error)."""
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(b).max())


def exact_shapley(f: Any, m: int) -> np.ndarray:
    """Shapley values of the set function ``f(z)`` (``z`` a 0/1 vector of ``m`` players) by
    enumerating every coalition with the weights ``|S|! (m − |S| − 1)! / m!``."""
    import itertools
    import math

    phi = np.zeros(m)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for subset in itertools.combinations(others, size):
                z = np.zeros(m, int)
                z[list(subset)] = 1
                with_j = z.copy()
                with_j[j] = 1
                phi[j] += weight * (f(with_j) - f(z))
    return phi
