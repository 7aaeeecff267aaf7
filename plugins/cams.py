"""Class activation maps from gradients: Grad-CAM and Grad-CAM++.

Both weight the feature maps ``A^k`` of a spatial layer (default: the last layer whose output
is ``(N, C, h, w)`` / ``(N, h, w, C)`` with more than one position) by gradients of the class
score, take the ReLU of the weighted sum, and upsample it bilinearly to the input size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep

from xai_toolbox._targets import Targets
from xai_toolbox.base import AttributionMethod
from xai_toolbox.errors import LayerError
from xai_toolbox.ops import resize
from xai_toolbox.registry import hookimpl


def channels_first(a: ep.Tensor, channel_axis: int) -> ep.Tensor:
    """Activations ``(N, K, h, w)`` whatever the framework's layout."""
    return a if channel_axis == 1 else a.transpose((0, 3, 1, 2))


def spatial_activations(
    method: AttributionMethod, x: ep.Tensor, targets: Targets, layer: str, with_grad: bool
) -> tuple[ep.Tensor, ep.Tensor | None]:
    """Activations (and gradients) of ``layer`` as ``(N, K, h, w)``, ``batch_size`` images at a time."""
    adapter = method.adapter
    acts, grads = [], []
    for start in range(0, x.shape[0], method.batch_size):
        stop = min(start + method.batch_size, x.shape[0])
        sub = targets.take(slice(start, stop))
        if with_grad:
            a, g, _ = sub.layer_gradient(adapter, x[start:stop], layer)
        else:
            a, g, _ = adapter.layer_activations(x[start:stop], layer)
        if a.ndim != 4:
            raise LayerError(
                f"layer {layer!r} has output shape {tuple(a.shape)}; {method.name} needs a spatial "
                "layer with a 4-D output (N, C, H, W) / (N, H, W, C)"
            )
        acts.append(channels_first(a, adapter.channel_axis))
        if g is not None:
            grads.append(channels_first(g, adapter.channel_axis))
    return _concat(acts), (_concat(grads) if grads else None)


def _concat(parts: list[ep.Tensor]) -> ep.Tensor:
    return parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)


def input_size(x: ep.Tensor, channel_axis: int) -> tuple[int, int]:
    if x.ndim != 4:
        raise LayerError(
            f"CAM methods explain images (rank 4); got inputs of shape {tuple(x.shape)}. "
            "For tabular or series inputs use a gradient or black-box method"
        )
    return (x.shape[2], x.shape[3]) if channel_axis == 1 else (x.shape[1], x.shape[2])


class _CAM(AttributionMethod):
    needs_gradients = True

    def __init__(
        self,
        model: Any,
        *,
        layer: str | None = None,
        batch_size: int = 64,
        score_fn: Any = None,
        progress: bool | None = None,
        framework: str | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, score_fn=score_fn, progress=progress, framework=framework)
        if layer is not None and not isinstance(layer, str):
            raise LayerError(f"layer must be a layer name (str) or None, got {type(layer).__name__}")
        self.layer = layer

    def _explain(self, x: ep.Tensor, targets: Targets) -> ep.Tensor:
        size = input_size(x, self.adapter.channel_axis)
        layer = self.layer or self.adapter.default_layer(x)
        acts, grads = spatial_activations(self, x, targets, layer, with_grad=True)
        assert grads is not None
        weights = self._weights(acts, grads)  # (N, K)
        cam = (weights[:, :, None, None] * acts).sum(axis=1).maximum(0.0)
        return resize(cam, size, "bilinear")

    def _weights(self, acts: ep.Tensor, grads: ep.Tensor) -> ep.Tensor:
        raise NotImplementedError


class GradCAM(_CAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017).

    ``α_k = mean_ij ∂S/∂A^k_ij``, ``L = ReLU(Σ_k α_k A^k)``, bilinearly upsampled. For a
    network ending in global average pooling and a linear layer this equals CAM (up to 1/hw).

    Args:
        layer: layer name (PyTorch dotted module name, Keras layer name — also inside nested
            models, or ``"outer/inner"``); default: the last spatial layer.

    Example:
        >>> maps = xt.GradCAM(model, layer="layer4")(images, labels)
    """

    name = "gradcam"

    def _weights(self, acts: ep.Tensor, grads: ep.Tensor) -> ep.Tensor:
        return grads.mean(axis=(2, 3))


class GradCAMPlusPlus(_CAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), Eq. 19 with the sum over positions.

    With ``g = ∂S/∂A``: ``α = g² / (2g² + Σ_ab A_ab · g³)`` (0 where the denominator is 0),
    ``w_k = Σ_ij α_ij ReLU(g_ij)``, ``L = ReLU(Σ_k w_k A^k)``. Xplique uses the spatial *mean*
    of ``A`` instead of the sum; we follow the paper (and pytorch-grad-cam).

    Example:
        >>> maps = xt.method("gradcampp", model)(images, labels)
    """

    name = "gradcampp"

    def _weights(self, acts: ep.Tensor, grads: ep.Tensor) -> ep.Tensor:
        g2 = grads * grads
        denom = 2 * g2 + acts.sum(axis=(2, 3), keepdims=True) * g2 * grads
        safe = ep.where(denom != 0, denom, ep.ones_like(denom))
        alpha = ep.where(denom != 0, g2 / safe, ep.zeros_like(denom))
        return (alpha * grads.maximum(0.0)).sum(axis=(2, 3))


@hookimpl
def register_methods(register: Callable[[str, type], None]) -> None:
    register(GradCAM.name, GradCAM)
    register(GradCAMPlusPlus.name, GradCAMPlusPlus)
