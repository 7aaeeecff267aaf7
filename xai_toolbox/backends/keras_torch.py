"""Keras 3 on the PyTorch backend: a ``keras.Model`` that is also a ``torch.nn.Module``.

Run eagerly as PyTorch runs (Keras compiles nothing outside ``fit``), with the Keras layout
(channels-last inputs) and Keras's layers, names and weights (:mod:`.keras_common`); inputs,
devices, gradients (``torch.autograd.grad`` on the inputs only), eval mode and the ReLU rules
are the PyTorch adapter's. Inner layers are reached by wrapping their Keras ``call`` (Keras
layers are called through Keras, so torch forward hooks never fire on them).
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import torch

from ..errors import LayerError
from .adapter import ScoreOf, check_replacement
from .keras_common import (
    CallPatch,
    KerasLayers,
    capture_into,
    check_one_input,
    owned_by_this_thread,
    patch_lock,
)
from .torch import TorchAdapter, _float32


class KerasTorchAdapter(KerasLayers, TorchAdapter):
    """Adapter for Keras 3 models on the PyTorch backend (channels-last inputs, torch tensors)."""

    framework = "keras-torch"
    display_name = "Keras (PyTorch backend)"
    supports_autocast = False

    def __init__(self, model: Any) -> None:
        TorchAdapter.__init__(self, model)
        self.channel_axis = -1
        self._default_layers = {}

    def to_model(self, x: Any) -> ep.Tensor:
        check_one_input(self.model)
        return TorchAdapter.to_model(self, x)

    def _run(self, raw: torch.Tensor) -> Any:
        return self.model(raw, training=False)

    def _captured(self, x: ep.Tensor, layer: str, *, leaf: bool) -> tuple[Any, Any]:
        """The model's outputs on ``x`` and ``layer``'s output (made a leaf that takes gradients
        when ``leaf`` and it would not, e.g. with frozen weights)."""
        captured: list[Any] = []
        keep = capture_into(captured, layer, self.is_native)

        def capture(out: Any) -> Any:
            out = keep(out)
            if leaf and captured and captured[0] is out and not out.requires_grad:
                out = out.detach().requires_grad_(True)
                captured[:] = [out]
            return out

        with patch_lock, CallPatch(self._layer(layer), capture), self.calling_model(x):
            outputs = self.select_output(self._run(x.raw))
        if not captured:
            raise LayerError(f"layer {layer!r} was not called by the model")
        return outputs, captured[0]

    def differentiable_activations(self, x: ep.Tensor, layer: str) -> tuple[ep.Tensor, ep.Tensor]:
        outputs, acts = self._captured(x, layer, leaf=False)
        return ep.astensor(_float32(acts)), ep.astensor(outputs)

    def layer_activations_pass(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        if score_of is None:
            with torch.no_grad():
                outputs, acts = self._captured(x, layer, leaf=False)
            return ep.astensor(_float32(acts)), None, ep.astensor(outputs)
        with torch.enable_grad():
            outputs, acts = self._captured(x, layer, leaf=True)
            score = score_of(ep.astensor(outputs)).raw
            grad = None
            if score.requires_grad:
                with self.calling_model(x, "differentiated"):
                    (grad,) = torch.autograd.grad(score.sum(), acts, allow_unused=True)
        if grad is None:
            raise LayerError(f"the score does not depend on layer {layer!r}")
        return ep.astensor(_float32(acts.detach())), ep.astensor(_float32(grad)), ep.astensor(outputs.detach())

    def forward_with_activations_pass(self, x: ep.Tensor, layer: str, activations: ep.Tensor) -> ep.Tensor:
        replacement = activations.raw
        replaced: list[bool] = []

        def substitute(out: Any) -> Any:
            check_replacement(layer, tuple(out.shape), tuple(replacement.shape))
            replaced.append(True)
            return replacement.to(dtype=out.dtype)

        patch = CallPatch(self._layer(layer), owned_by_this_thread(substitute, self.is_native))
        with torch.no_grad(), patch_lock, patch, self.calling_model(x):
            outputs = self.select_output(self._run(x.raw))
        if not replaced:
            raise LayerError(f"layer {layer!r} was not called by the model")
        return ep.astensor(outputs)
