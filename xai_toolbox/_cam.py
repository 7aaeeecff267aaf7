"""The base of class activation map methods: capture a layer, weigh its channels, upsample.

Every CAM combines the feature maps ``A^k`` of one spatial layer into a map at the layer's
resolution and upsamples it to the input. :class:`CAMMethod` does the common part — the
``layer=`` parameter (default: the last spatial layer), capturing the activations (and, when
the method needs them, the gradients of the explained score with respect to them) in chunks
of ``batch_size`` images through the adapter, channels first whatever the framework, and
the bilinear upsampling — and hands each chunk to :meth:`CAMMethod.cam` as a
:class:`LayerCapture` holding the inputs, the targets and the outputs too, so methods that
run the model again on masked inputs (Score-CAM, Ablation-CAM) fit as well as gradient ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import eagerpy as ep

from . import _validation as v
from ._targets import Targets
from .base import AttributionMethod, Explanation
from .errors import LayerError
from .ops import channels_first, resize


@dataclass(frozen=True)
class LayerCapture:
    """One chunk of images as a CAM method sees it.

    Attributes:
        x: the images, in the model's layout, on its device ``(B, ...)``.
        targets: the targets of these images (score outputs, take gradients).
        layer: the qualified name of the captured layer.
        activations: the layer's output, channels first ``(B, K, h, w)``.
        gradients: the explained score's gradient with respect to ``activations``, same
            shape, when the method has ``needs_gradients``; else ``None``.
        outputs: the model outputs ``(B, classes)`` of the pass that captured the layer.

    Example:
        >>> def channel_weights(self, capture):                  # Grad-CAM's weights
        ...     return capture.gradients.mean(axis=(2, 3))       # (B, K)
    """

    x: ep.Tensor
    targets: Targets
    layer: str
    activations: ep.Tensor
    gradients: ep.Tensor | None
    outputs: ep.Tensor


def input_size(x: ep.Tensor, channel_axis: int, method: str = "CAM methods") -> tuple[int, int]:
    """``(H, W)`` of a batch of images, or a :class:`LayerError` for other inputs.

    Example:
        >>> input_size(x, adapter.channel_axis)
        (224, 224)
    """
    if x.ndim != 4:
        raise LayerError(
            f"{method} explain images (rank 4); got inputs of shape {tuple(x.shape)}. "
            "For tabular or series inputs use a gradient or black-box method"
        )
    return (x.shape[2], x.shape[3]) if channel_axis == 1 else (x.shape[1], x.shape[2])


class CAMMethod(AttributionMethod):
    """Base class of CAM methods (see the module docs).

    A subclass implements :meth:`channel_weights` (``(B, K)`` weights of the feature maps; the
    map is ``ReLU(Σ_k w_k A^k)``) or, for element-wise rules, :meth:`cam` itself. Set
    ``needs_gradients = False`` for methods that only run forward passes (then
    ``capture.gradients`` is ``None`` and models without gradients can be explained too).

    Args:
        layer: layer name (PyTorch dotted module name, Keras layer name — also inside nested
            models, or ``"outer/inner"``); default: the last spatial layer.

    After a call, ``extras["layer"]`` of :meth:`~xai_toolbox.AttributionMethod.explain_with_extras`
    names the layer used.

    Example:
        >>> class MeanCAM(CAMMethod):                        # Grad-CAM in four lines
        ...     name = "mean_cam"
        ...     def channel_weights(self, capture):
        ...         return capture.gradients.mean(axis=(2, 3))
    """

    needs_gradients: ClassVar[bool] = True
    needs_layers: ClassVar[bool] = True
    family: ClassVar[str] = "cam"
    input_kinds: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, model: Any, *, layer: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.layer = v.layer_name("layer", layer)

    def check_call(self, x: ep.Tensor) -> None:
        input_size(x, self.adapter.channel_axis, self._plugin_name())
        if self.layer is not None:
            self.adapter.resolve_layer(self.layer)  # an unknown name fails before any model call

    def passes_per_image(self) -> int | None:
        """One pass capturing the layer (forward and backward where gradients are needed);
        methods that run the model again on masked inputs say more."""
        return 1

    def layer_for(self, x: ep.Tensor) -> str:
        """The layer this method captures for inputs like ``x``: ``layer=`` or the default."""
        return self.layer or self.adapter.default_layer(x)

    def captures(self, x: ep.Tensor, targets: Targets, layer: str) -> list[LayerCapture]:
        """The layer captured for all of ``x``, in chunks of ``batch_size`` images."""
        return [
            self.capture(x[start : start + self.batch_size], targets.take(slice(start, start + self.batch_size)), layer)
            for start in range(0, x.shape[0], self.batch_size)
        ]

    def capture(self, x: ep.Tensor, targets: Targets, layer: str) -> LayerCapture:
        """One pass over ``x`` capturing ``layer`` (with gradients if the method needs them)."""
        adapter = self.adapter
        if self.needs_gradients:
            acts, grads, outputs = targets.layer_gradient(adapter, x, layer)
        else:
            acts, grads, outputs = adapter.layer_activations(x, layer)
        if acts.ndim != 4:
            raise LayerError(
                f"layer {layer!r} has output shape {tuple(acts.shape)}; {self._plugin_name()} needs a "
                "spatial layer with a 4-D output (N, C, H, W) / (N, H, W, C)"
            )
        axis = adapter.channel_axis
        return LayerCapture(
            x, targets, layer, channels_first(acts, axis),
            None if grads is None else channels_first(grads, axis), outputs,
        )

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> Explanation:
        size = input_size(x, self.adapter.channel_axis, self._plugin_name())
        layer = self.layer_for(x)
        cams = [self.cam(capture) for capture in self.captures(x, targets, layer)]
        cam = cams[0] if len(cams) == 1 else ep.concatenate(cams, axis=0)
        return Explanation(resize(cam, size, "bilinear"), {"layer": layer})

    def cam(self, capture: LayerCapture) -> ep.Tensor:
        """The map ``(B, h, w)`` at the layer's resolution: ``ReLU(Σ_k w_k A^k)`` with the
        weights of :meth:`channel_weights`."""
        weights = self.channel_weights(capture)
        return (weights[:, :, None, None] * capture.activations).sum(axis=1).maximum(0.0)

    def channel_weights(self, capture: LayerCapture) -> ep.Tensor:
        """``(B, K)`` weights of the feature maps; implement this or :meth:`cam`."""
        raise NotImplementedError(f"{type(self).__name__} must implement channel_weights() or cam()")
