"""Class activation maps from one forward and one backward pass: Layer-CAM, XGrad-CAM, HiRes-CAM.

Like Grad-CAM they combine the feature maps ``A^k`` of a spatial layer with the gradient
``g = ∂S/∂A`` of the explained score, but they keep the gradient's spatial detail instead of
averaging it per channel:

* Layer-CAM   ``L = ReLU(Σ_k ReLU(g^k) ⊙ A^k)``               (element-wise, positive gradients)
* HiRes-CAM   ``L = ReLU(Σ_k g^k ⊙ A^k)``                      (element-wise)
* XGrad-CAM   ``α_k = Σ_p A^k_p g^k_p / Σ_q A^k_q``, ``L = ReLU(Σ_k α_k A^k)``

All three run on :class:`xai_toolbox.extend.CAMMethod` (layer by name, capture in chunks of
``batch_size`` images, bilinear upsampling). On a network ending in global average pooling
and a linear layer HiRes-CAM and XGrad-CAM equal Grad-CAM, and Layer-CAM is Grad-CAM without
the channels of negative weight.
"""

from __future__ import annotations

from collections.abc import Callable

import eagerpy as ep

import xai_toolbox as xt
from xai_toolbox.extend import CAMMethod, LayerCapture


def _gradients(capture: LayerCapture) -> ep.Tensor:
    assert capture.gradients is not None  # these methods have needs_gradients = True
    return capture.gradients


class LayerCAM(CAMMethod):
    """Layer-CAM (Jiang, Zhang, Hou, Cheng, Wei — IEEE TIP 30, 2021).

    ``L = ReLU(Σ_k ReLU(∂S/∂A^k) ⊙ A^k)``: each position of each feature map is weighted by
    its own positive gradient (no spatial pooling), which keeps fine detail on shallow layers.
    One layer per call; the paper's fusion of several layers (with ``tanh`` scaling of the
    shallow ones) is left to the caller.

    Args:
        layer: layer name (as for Grad-CAM); default: the last spatial layer.

    Example:
        >>> maps = xt.LayerCAM(model, layer="layer3")(images, labels)
    """

    name = "layercam"

    def cam(self, capture: LayerCapture) -> ep.Tensor:
        weighted = _gradients(capture).maximum(0.0) * capture.activations
        return weighted.sum(axis=1).maximum(0.0)


class HiResCAM(CAMMethod):
    """HiRes-CAM (Draelos & Carin, arXiv 2011.08891, 2020).

    ``L = ReLU(Σ_k ∂S/∂A^k ⊙ A^k)``: the gradient times the activation, position by position,
    summed over channels. For a network whose layer feeds global average pooling and a linear
    head, the score is exactly the sum of this map before the ReLU (up to the bias), and it
    equals Grad-CAM.

    Args:
        layer: layer name (as for Grad-CAM); default: the last spatial layer.

    Example:
        >>> maps = xt.method("hirescam", model, layer="layer4")(images, labels)
    """

    name = "hirescam"

    def cam(self, capture: LayerCapture) -> ep.Tensor:
        return (_gradients(capture) * capture.activations).sum(axis=1).maximum(0.0)


class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu, Hu, Dong, Sun, Li, Liu — "Axiom-based Grad-CAM", BMVC 2020).

    ``α_k = Σ_p (A^k_p / Σ_q A^k_q) · ∂S/∂A^k_p``, ``L = ReLU(Σ_k α_k A^k)``: the gradient
    averaged with the feature map itself as the weights. Channels whose activations sum to 0
    get ``α_k = 0`` (pytorch-grad-cam adds ``1e-7`` to the sum instead). Meant for layers after
    a ReLU: elsewhere the sum can be near 0 or negative and ``α`` explodes or flips sign.

    Args:
        layer: layer name (as for Grad-CAM); default: the last spatial layer.

    Example:
        >>> maps = xt.XGradCAM(model, layer="layer4")(images, labels)
    """

    name = "xgradcam"

    def channel_weights(self, capture: LayerCapture) -> ep.Tensor:
        acts = capture.activations
        total = acts.sum(axis=(2, 3))
        weighted = (acts * _gradients(capture)).sum(axis=(2, 3))
        safe = ep.where(total != 0, total, ep.ones_like(total))
        return ep.where(total != 0, weighted / safe, ep.zeros_like(total))


@xt.hookimpl
def register_methods(register: Callable[[str, type], None]) -> None:
    for cls in (LayerCAM, HiResCAM, XGradCAM):
        register(cls.name, cls)
