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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import eagerpy as ep
import numpy as np

from . import _validation as v
from ._targets import Targets
from .backends.adapter import token_grid
from .base import AttributionMethod, Explanation
from .errors import LayerError, ParameterError
from .ops import channels_first, resize

#: What ``reshape=`` accepts: ``None`` (token layers ``(N, tokens, C)`` mapped to their patch
#: grid automatically), a grid ``(h, w)`` or ``h`` (square), or a callable taking the layer's
#: native output and returning a rank-4 tensor in the framework's layout.
Reshape = Callable[[Any], Any] | int | tuple[int, int] | None


@dataclass(frozen=True)
class LayerCapture:
    """One chunk of images as a CAM method sees it.

    Attributes:
        x: the images, in the model's layout, on its device ``(B, ...)``.
        targets: the targets of these images (score outputs, take gradients).
        layer: the qualified name of the captured layer.
        activations: the layer's output, channels first ``(B, K, h, w)`` (a token layer's
            patch tokens on their grid, see ``reshape=``).
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
            models, or ``"outer/inner"``); default: the last spatial layer, or for a
            transformer the last token layer on whose patch tokens the outputs depend (the
            normalisation at the input of the last block of a ViT, see
            :func:`~xai_toolbox.extend.token_layers`).
        reshape: how a token layer's output ``(N, tokens, C)`` becomes feature maps
            ``(N, C, h, w)``. ``None``: the leading class / distillation / register tokens
            are dropped and the patch tokens laid on the patch grid found from the input size
            and the token count (:func:`~xai_toolbox.extend.token_grid`); ``(h, w)`` (or
            ``h`` for a square grid): the last ``h·w`` tokens on that grid; a callable: takes
            the layer's native output and returns a rank-4 tensor in the framework's layout
            (``(N, C, h, w)`` PyTorch, ``(N, h, w, C)`` Keras), applied to the activations and
            to their gradients (e.g. ``lambda t: t.permute(0, 3, 1, 2)`` for torchvision Swin
            blocks, which output ``(N, h, w, C)``).

    After a call, ``layer_`` and ``extras["layer"]`` of
    :meth:`~xai_toolbox.AttributionMethod.explain_with_extras` name the layer used.

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

    def __init__(self, model: Any, *, layer: str | None = None, reshape: Reshape = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.layer = v.layer_name("layer", layer)
        self.reshape = reshape_param("reshape", reshape)
        #: The layer used by the last call (``None`` before the first call).
        self.layer_: str | None = None

    def check_call(self, x: ep.Tensor) -> None:
        input_size(x, self.adapter.channel_axis, self._plugin_name())
        if self.layer is not None:
            self.adapter.resolve_layer(self.layer)  # an unknown name fails before any model call

    def passes_per_image(self) -> int | None:
        """One pass capturing the layer (forward and backward where gradients are needed);
        methods that run the model again on masked inputs say more."""
        return 1

    def layer_for(self, x: ep.Tensor) -> str:
        """The layer this method captures for inputs like ``x``: ``layer=`` or the default
        (remembered as ``layer_``)."""
        layer = self.layer or self.adapter.default_layer(x)
        self.layer_ = layer
        return layer

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
        acts, grads = self.feature_maps(x, layer, acts), None if grads is None else self.feature_maps(x, layer, grads)
        return LayerCapture(x, targets, layer, acts, grads, outputs)

    def feature_maps(self, x: ep.Tensor, layer: str, values: ep.Tensor) -> ep.Tensor:
        """A layer's output (or its gradient) for the images ``x`` as channels-first feature
        maps ``(B, K, h, w)``: spatial layers as they are, token layers ``(B, tokens, C)``
        on their patch grid (see ``reshape=``). Every CAM, its own capture code included
        (Opti-CAM), goes through it.

        Example:
            >>> acts, _, _ = self.adapter.layer_activations(x, layer)
            >>> maps = self.feature_maps(x, layer, acts)           # (B, K, h, w)
        """
        name, axis = self._plugin_name(), self.adapter.channel_axis
        if callable(self.reshape):
            shaped = self.reshape(values.raw)
            if not hasattr(shaped, "shape") or len(shaped.shape) != 4:
                raise LayerError(
                    f"reshape= must return a rank-4 tensor (N, C, h, w) / (N, h, w, C); for layer "
                    f"{layer!r} of output shape {tuple(values.shape)} it returned "
                    f"{tuple(shaped.shape) if hasattr(shaped, 'shape') else type(shaped).__name__}"
                )
            return channels_first(ep.astensor(shaped), axis)
        if values.ndim == 3:
            return _patch_grid(values, layer, input_size(x, axis, name), self.reshape, name)
        if values.ndim == 4:
            if self.reshape is not None:
                raise LayerError(
                    f"reshape={self.reshape!r} lays token layers (N, tokens, C) on a grid, but layer "
                    f"{layer!r} is already spatial {tuple(values.shape)}: leave reshape=None"
                )
            return channels_first(values, axis)
        raise LayerError(
            f"layer {layer!r} has output shape {tuple(values.shape)}; {name} needs a spatial layer "
            "with a 4-D output (N, C, H, W) / (N, H, W, C) or a token layer (N, tokens, C) (pass "
            "reshape= for other layouts)"
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


def reshape_param(name: str, value: Any) -> Reshape:
    """Validate a ``reshape=`` parameter (see :class:`CAMMethod`): ``None``, a callable, a grid
    side ``h`` or a grid ``(h, w)`` of positive integers.

    Example:
        >>> reshape_param("reshape", (14, 14))
        (14, 14)
    """
    if value is None or callable(value):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        side = v.positive_int(name, value)
        return (side, side)
    if isinstance(value, tuple | list) and len(value) == 2:
        return (v.positive_int(f"{name}[0]", value[0]), v.positive_int(f"{name}[1]", value[1]))
    raise ParameterError(
        f"{name} must be None (automatic), a grid (h, w), a grid side h, or a callable returning "
        f"rank-4 feature maps; got {value!r}"
    )


def _patch_grid(
    tokens: ep.Tensor, layer: str, size: tuple[int, int], grid: tuple[int, int] | None, method: str
) -> ep.Tensor:
    """Token values ``(B, T, C)`` → the patch tokens on their grid, channels first ``(B, C, h, w)``."""
    n, count, channels = (int(d) for d in tokens.shape)
    if grid is None:
        found = token_grid(count, size)
        if found is None:
            raise LayerError(
                f"layer {layer!r} outputs {count} tokens (shape {tuple(tokens.shape)}), which do not "
                f"form a grid of square patches over {size[0]}×{size[1]} images after at most a few "
                f"leading tokens; pass reshape=(h, w) or a callable to {method}"
            )
        prefix, h, w = found
    else:
        h, w = grid
        prefix = count - h * w
        if prefix < 0:
            raise LayerError(
                f"reshape=({h}, {w}) needs {h * w} patch tokens, but layer {layer!r} outputs only {count}"
            )
    return tokens[:, prefix:, :].reshape((n, h, w, channels)).transpose((0, 3, 1, 2))
