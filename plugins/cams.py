"""Class activation maps from gradients: Grad-CAM and Grad-CAM++.

Both weight the feature maps ``A^k`` of a spatial layer (default: the last layer whose output
is ``(N, C, h, w)`` / ``(N, h, w, C)`` with more than one position) by gradients of the class
score, take the ReLU of the weighted sum, and upsample it bilinearly to the input size — the
pipeline of :class:`xai_toolbox.extend.CAMMethod`, which each method completes with its
channel weights.
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep

import xai_toolbox as xt
from xai_toolbox.extend import CAMMethod, LayerCapture


class GradCAM(CAMMethod):
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

    def channel_weights(self, capture: LayerCapture) -> ep.Tensor:
        assert capture.gradients is not None
        return capture.gradients.mean(axis=(2, 3))


class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), Eq. 19 with the sum over positions.

    With ``g = ∂S/∂A``: ``α = g² / (2g² + Σ_ab A_ab · g³)`` (0 where the denominator is 0),
    ``w_k = Σ_ij α_ij ReLU(g_ij)``, ``L = ReLU(Σ_k w_k A^k)``. Xplique uses the spatial *mean*
    of ``A`` instead of the sum; we follow the paper (and pytorch-grad-cam).

    Example:
        >>> maps = xt.method("gradcampp", model)(images, labels)
    """

    name = "gradcampp"

    def channel_weights(self, capture: LayerCapture) -> ep.Tensor:
        acts, grads = capture.activations, capture.gradients
        assert grads is not None
        g2 = grads * grads
        denom = 2 * g2 + acts.sum(axis=(2, 3), keepdims=True) * g2 * grads
        safe = ep.where(denom != 0, denom, ep.ones_like(denom))
        alpha = ep.where(denom != 0, g2 / safe, ep.zeros_like(denom))
        return (alpha * grads.maximum(0.0)).sum(axis=(2, 3))


@xt.hookimpl
def register_methods(register: Callable[[str, type], None]) -> None:
    register(GradCAM.name, GradCAM)
    register(GradCAMPlusPlus.name, GradCAMPlusPlus)
