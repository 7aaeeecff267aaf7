"""An example xai-toolbox plugin: the centre-prior baseline.

The "center baseline" of the pointing-game literature (Zhang et al. 2016): a Gaussian bump
in the middle of the image, whatever the model says. Any explanation worth using should beat
it on localisation metrics, which makes it a useful reference in evaluations.

Install this package (``pip install ./tests/example_plugin``) and it appears in
``xt.list_methods()`` as ``center_prior``.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import _validation as v


class CenterPrior(xt.AttributionMethod):
    """A centred Gaussian map with standard deviation ``sigma`` × the image side.

    Example:
        >>> maps = xt.method("center_prior", model, sigma=0.25)(images)
    """

    name = "center_prior"

    def __init__(
        self,
        model: Any,
        *,
        sigma: float = 0.25,
        batch_size: int = 64,
        score_fn: Any = None,
        progress: bool | None = None,
        framework: str | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, score_fn=score_fn, progress=progress, framework=framework)
        self.sigma = v.in_range("sigma", sigma, 0.0, 10.0)

    def _explain(self, x: ep.Tensor, targets: Any) -> ep.Tensor:
        shape = self._explanation_shape(x)
        grids = np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in shape[1:]], indexing="ij")
        bump = np.exp(-sum(g**2 for g in grids) / (2 * self.sigma**2)).astype(np.float32)
        return ep.from_numpy(x, np.broadcast_to(bump, shape).copy())


@xt.hookimpl
def register_methods(register: Any) -> None:
    register(CenterPrior.name, CenterPrior)
