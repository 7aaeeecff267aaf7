"""No host synchronisation inside the chunk loops (PyTorch).

On a GPU, every read of a device value on the host (``.item()``, ``.numpy()``, ``.cpu()``,
``bool(t)``, ``nonzero``) waits for the queued work to finish, so one per chunk would stall
the pipeline. We count those reads with a ``TorchFunctionMode`` on the CPU: a method may
make a few per call (the final checks, the result), never more as the chunks get more.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest

import xai_toolbox as xt
from xai_toolbox.testing import cnn

#: Tensor operations whose result the host must wait for.
HOST_READS = {"item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__", "__index__"}

#: Per image: 48 model inputs, so batch_size 48 is one chunk per image and 8 is six.
METHODS: dict[str, dict[str, Any]] = {
    "rise": {"nb_samples": 48, "grid_size": 4},
    "sobol": {"nb_design": 8, "grid_size": 4},  # 8 · (4² + 2) inputs per image
    "hsic": {"nb_design": 48, "grid_size": 4},
    "occlusion": {"patch_size": 4, "stride": 2},
    "smoothgrad": {"nb_samples": 48, "noise_source": "device"},
    "integrated_gradients": {"steps": 48},
    "lime": {"nb_samples": 48, "grid_size": 4},
    "kernel_shap": {"nb_samples": 48, "grid_size": 4},
    "shapley_value_sampling": {"nb_samples": 15, "grid_size": 2},  # 2 + 15 · 3 = 47
    "feature_ablation": {"grid_size": 7},  # 49 + 1
}
METRICS: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 47},
    "insertion": {"steps": 47},
    "mufidelity": {"nb_samples": 48, "grid_size": 4},
}


def _host_reads(torch: Any, run: Any) -> collections.Counter[str]:
    class Count(torch.overrides.TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.reads: collections.Counter[str] = collections.Counter()

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = getattr(func, "__name__", "")
            if name in HOST_READS:
                self.reads[name] += 1
            return func(*args, **(kwargs or {}))

    run()  # warm-up: caches (probed output width, default layer) fill once
    with Count() as mode:
        run()
    return mode.reads


@pytest.mark.parametrize("name", [*METHODS, *METRICS])
def test_host_reads_do_not_grow_with_the_chunks(torch: Any, name: str) -> None:
    model = cnn("torch", 0)
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32))
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))

    def reads(batch_size: int) -> collections.Counter[str]:
        if name in METHODS:
            method = xt.method(name, model, batch_size=batch_size, progress=False, **METHODS[name])
            return _host_reads(torch, lambda: method(x, [0, 1]))
        metric = xt.metric(name, model, batch_size=batch_size, progress=False, **METRICS[name])
        return _host_reads(torch, lambda: metric(x, [0, 1], maps))

    few, many = reads(48), reads(8)
    assert sum(few.values()) > 0  # the count sees reads (the final checks make some)
    assert many == few
