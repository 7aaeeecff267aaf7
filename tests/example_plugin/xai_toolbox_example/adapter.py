"""The adapter plugin for TinyNet, built on the public adapter contract only.

Forward passes and named intermediate outputs; no gradients (TinyNet has none), so black-box
methods and forward-only CAMs (:class:`~xai_toolbox_example.methods.MaskedCAM`) explain TinyNet
models, and gradient methods refuse them with a clear error.
"""

from __future__ import annotations

import copy
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe

from .tinynet import TinyNet, tiny_cnn


class TinyNetAdapter(xe.ModelAdapter):
    """:class:`~xai_toolbox_example.tinynet.TinyNet` models, NCHW NumPy arrays."""

    framework = "tinynet"
    display_name = "TinyNet"
    supports_gradients = False
    mutable_tensors = True

    def __init__(self, model: TinyNet) -> None:
        super().__init__(model, channel_axis=1)

    # -- data ----------------------------------------------------------------------------
    def is_native(self, x: Any) -> bool:
        return isinstance(x, np.ndarray)

    def to_model(self, x: Any) -> ep.Tensor:
        return ep.astensor(xe.float32_array(x))

    def restore(self, t: ep.Tensor, like: Any) -> Any:
        return xe.as_type_of(np.asarray(t.raw), like)

    def write_rows(self, buffer: Any, index: Any, values: Any, *, add: bool = False) -> None:
        if add:
            buffer[index] += values
        else:
            buffer[index] = values

    # -- model ---------------------------------------------------------------------------
    def forward_pass(self, x: ep.Tensor) -> ep.Tensor:
        with self.calling_model(x):
            return ep.astensor(self.model(x.raw))

    def layer_activations_pass(
        self, x: ep.Tensor, layer: str, score_of: xe.ScoreOf | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        if score_of is not None:  # a gradient was asked for
            raise xt.UnsupportedModelError(self.no_gradients_message())
        name = self.resolve_layer(layer)
        with self.calling_model(x):
            outputs, (acts,) = self.model.run(x.raw, [name])
        return ep.astensor(acts), None, ep.astensor(outputs)

    def forward_with_activations_pass(self, x: ep.Tensor, layer: str, activations: ep.Tensor) -> ep.Tensor:
        name = self.resolve_layer(layer)
        with self.calling_model(x):
            outputs, _ = self.model.run(x.raw, replace={name: activations.raw})
        return ep.astensor(outputs)

    # -- layers --------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.model.layers]

    def default_layer(self, x: ep.Tensor) -> str:
        names = self.layer_names()
        _, outputs = self.model.run(x.raw[:1], names)
        records = [(n, tuple(o.shape)) for n, o in zip(names, outputs, strict=True)]
        chosen = xe.pick_default_layer(records, self.channel_axis)
        if chosen is None:
            raise xt.LayerError("this TinyNet has no layer with a spatial output")
        return chosen

    # -- weights -------------------------------------------------------------------------
    def weight_layers(self) -> list[str]:
        return [name for name, layer in self.model.layers if hasattr(layer, "parameters")]

    def reinitialize(self, layers: list[str], draw: xe.Draw) -> None:
        named = dict(self.model.layers)
        for name in layers:
            params = named[name].parameters()  # already in the canonical (PyTorch) layout
            for p, values in zip(params, draw([p.shape for p in params]), strict=True):
                p[...] = values

    def clone(self) -> TinyNetAdapter:
        return TinyNetAdapter(copy.deepcopy(self.model))

    def model_state(self) -> Any:
        return tuple(
            p.tobytes() for _, layer in self.model.layers if hasattr(layer, "parameters") for p in layer.parameters()
        )


def build_test_model(architecture: str, **options: Any) -> TinyNet:
    """The test CNN for :mod:`xai_toolbox.testing` (the contract checks run on it)."""
    if architecture != "cnn":
        raise ValueError(f"TinyNet builds only the 'cnn' test model, not {architecture!r}")
    return tiny_cnn(options["weights"])


FRAMEWORK = xe.Framework(
    "tinynet", "TinyNet", aliases=("tiny",), module="numpy", models="a xai_toolbox_example.TinyNet",
    channel_axis=1, gradients=False, build_test_model=build_test_model,
)
