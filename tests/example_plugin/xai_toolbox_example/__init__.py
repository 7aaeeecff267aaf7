"""An example third-party plugin package for xai-toolbox, built on the public API only.

It adds two methods, a metric and a framework:

* ``center_prior`` — the centre-prior baseline (:class:`~.methods.CenterPrior`);
* ``masked_cam`` — a Score-CAM-like CAM on the extension API's CAM base (:class:`~.methods.MaskedCAM`);
* ``concentration`` — the Gini index of an explanation (:class:`~.metrics.Concentration`);
* ``tinynet`` — TinyNet, a NumPy inference engine, with its adapter (:mod:`.adapter`).

Install this package (``pip install ./tests/example_plugin``) and they appear in
``xt.list_methods()``, ``xt.list_metrics()`` and ``xai-toolbox list``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import xai_toolbox as xt
from xai_toolbox import extend as xe

xe.require_api("1.0")

from .adapter import FRAMEWORK, TinyNetAdapter  # noqa: E402
from .methods import CenterPrior, MaskedCAM  # noqa: E402
from .metrics import Concentration  # noqa: E402
from .tinynet import TinyNet, tiny_cnn  # noqa: E402

__all__ = ["CenterPrior", "Concentration", "MaskedCAM", "TinyNet", "TinyNetAdapter", "tiny_cnn"]


@xt.hookimpl
def register_methods(register: Callable[[str, type], None]) -> None:
    register(CenterPrior.name, CenterPrior)
    register(MaskedCAM.name, MaskedCAM)


@xt.hookimpl
def register_metrics(register: Callable[[str, type], None]) -> None:
    register(Concentration.name, Concentration)


@xt.hookimpl
def register_frameworks(register: Callable[[xe.Framework], None]) -> None:
    register(FRAMEWORK)


@xt.hookimpl
def adapt_model(model: Any, framework: str | None) -> Any:
    if framework in (None, "tinynet") and isinstance(model, TinyNet):
        return TinyNetAdapter(model)
    return None
