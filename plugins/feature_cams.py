"""Class-agnostic maps from the feature maps alone: Eigen-CAM and FEM.

One forward pass captures the layer; no gradient, no target (the maps are the same whichever
class is asked for). Eigen-CAM projects the activations on their first principal component;
FEM keeps, in every channel, the positions that stand out from the channel's mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import CAMMethod, LayerCapture

#: Repeated squarings of the normalised Gram matrix in :func:`top_eigenvector`: the second
#: eigenvalue's share falls as ``(λ₂/λ₁)^(2^n)``, below 1e-4 for every gap over 1e-5.
SQUARINGS = 20


def top_eigenvector(gram: ep.Tensor, squarings: int = SQUARINGS) -> ep.Tensor:
    """Unit eigenvectors ``(B, d)`` of the largest eigenvalue of symmetric positive
    semi-definite matrices ``gram`` ``(B, d, d)``, on the device, in any framework.

    ``M ← M² / trace(M²)`` from ``M = G / trace(G)`` converges to the projector ``u uᵀ`` on the
    top eigenvector; its column of largest diagonal is ``±u``, refined by one product with
    ``G``. The sign is arbitrary (as an SVD's); a zero matrix gives a zero vector.

    Example:
        >>> u = top_eigenvector(xe.matmul(x, x.transpose((0, 2, 1))))      # x (B, d, m)
    """
    b, d, _ = gram.shape
    eye = xe.on_device(gram, ("eye", d), np.eye(d, dtype=np.float32))

    def normalised(m: ep.Tensor) -> ep.Tensor:
        trace = (m * eye).sum(axis=(1, 2), keepdims=True)
        return m / ep.where(trace > 0, trace, ep.ones_like(trace))

    m = normalised(gram)
    for _ in range(squarings):
        m = normalised(xe.matmul(m, m))
    diagonal = (m * eye).sum(axis=2)                                    # (B, d): u_j²
    pick = (ep.arange(m, d)[None, :] == diagonal.argmax(axis=1)[:, None]).astype(m.dtype)
    column = (m * pick[:, None, :]).sum(axis=2)                         # u · u_j
    refined = xe.matmul(gram, column[:, :, None])[:, :, 0]              # λ u · u_j
    norm = (refined * refined).sum(axis=1, keepdims=True).sqrt()
    return refined / ep.where(norm > 0, norm, ep.ones_like(norm))


def first_component(activations: ep.Tensor) -> ep.Tensor:
    """The projection ``X v₁`` ``(B, h·w)`` of each image's centred (positions × channels)
    activation matrix ``X`` on its first right singular vector ``v₁`` (= ``s₁ u₁``), sign
    arbitrary. Only the smaller Gram matrix of ``X`` is formed (no ``(h·w)²`` ``U``).

    Example:
        >>> projection = first_component(capture.activations)        # (B, K, h, w) -> (B, h·w)
    """
    b, k, h, w = activations.shape
    x = activations.reshape((b, k, h * w)).transpose((0, 2, 1))          # (B, Z, K)
    x = x - x.mean(axis=1, keepdims=True)
    if h * w <= k:                                                       # X Xᵀ u = s² u, Xv = s u
        gram = xe.matmul(x, x.transpose((0, 2, 1)))
        u = top_eigenvector(gram)
        s2 = (xe.matmul(gram, u[:, :, None])[:, :, 0] * u).sum(axis=1, keepdims=True)
        return u * s2.maximum(0.0).sqrt()
    v = top_eigenvector(xe.matmul(x.transpose((0, 2, 1)), x))            # Xᵀ X v = s² v
    return xe.matmul(x, v[:, :, None])[:, :, 0]


class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv 2008.00299).

    Per image, the activations as a (positions × channels) matrix ``X``, centred over the
    positions, are projected on their first principal direction: ``L = ReLU(X v₁)`` reshaped
    to the layer's grid and upsampled. Class-agnostic (targets are not used), one forward pass,
    no gradient.

    An SVD's singular vectors have no sign: ``v₁`` and ``−v₁`` are equally valid, and after
    the ReLU they give complementary maps. pytorch-grad-cam keeps whatever sign LAPACK returns
    (so its maps can show the background); we fix it:

    * ``sign="channel_sum"`` (default): the projection correlates positively with the summed
      feature maps ``Σ_k A^k`` (equivalently ``Σ_k v₁ₖ ≥ 0``): high where the layer is active.
    * ``sign="max_abs"``: the projection's largest magnitude is positive (pytorch-grad-cam's
      sign correction for Seg-Eigen-CAM).

    Args:
        layer: layer name (as for Grad-CAM); default: the last spatial layer.
        sign: ``"channel_sum"`` or ``"max_abs"`` (see above).

    Example:
        >>> maps = xt.EigenCAM(model, layer="layer4")(images)
    """

    name = "eigencam"
    needs_gradients = False

    def __init__(self, model: Any, *, sign: str = "channel_sum", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.sign = xe.one_of("sign", sign, ("channel_sum", "max_abs"))

    def cam(self, capture: LayerCapture) -> ep.Tensor:
        acts = capture.activations
        b, k, h, w = acts.shape
        projection = first_component(acts)                               # (B, h·w)
        if self.sign == "channel_sum":
            total = acts.sum(axis=1).reshape((b, h * w))
            flip = (projection * (total - total.mean(axis=1, keepdims=True))).sum(axis=1) < 0
        else:
            flip = (-projection).max(axis=1) > projection.max(axis=1)
        oriented = ep.where(flip[:, None], -projection, projection)
        return oriented.reshape((b, h, w)).maximum(0.0)


class FEM(CAMMethod):
    """FEM, the Feature Explanation Method (Fuad, Martin, Giot, Bourqui, Benois-Pineau,
    Zemmari — IPTA 2020).

    Per channel, the positions above ``T_k = μ_k + k·σ_k`` (spatial mean and population
    standard deviation of ``A^k``) form a binary mask ``M_k``:

    * ``variant="xplique"`` (default; Xplique's documented formula): ``M_k = 1[A^k ≥ T_k]``,
      ``L = Σ_k μ_k · M_k`` (no ReLU);
    * ``variant="pytorch_grad_cam"``: ``M_k = 1[A^k > T_k]``,
      ``L = ReLU(Σ_k mean(M_k) · A^k)`` (the fraction of positions kept weighs the raw feature map).

    A channel constant over the positions (``σ_k = 0``) is all kept by the first rule and all
    dropped by the second, whatever the rounding of its mean. Class-agnostic, one forward pass,
    no gradient; maps are upsampled bilinearly (Xplique resizes bicubically).

    Args:
        layer: layer name (as for Grad-CAM); default: the last spatial layer.
        k: the threshold, in standard deviations above the mean (Xplique and
            pytorch-grad-cam: 2).
        variant: ``"xplique"`` or ``"pytorch_grad_cam"`` (see above).

    Example:
        >>> maps = xt.FEM(model, layer="layer4", k=2.0)(images)
    """

    name = "fem"
    needs_gradients = False

    def __init__(self, model: Any, *, k: float = 2.0, variant: str = "xplique", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.k = xe.number("k", k)
        self.variant = xe.one_of("variant", variant, ("xplique", "pytorch_grad_cam"))

    def cam(self, capture: LayerCapture) -> ep.Tensor:
        acts = capture.activations
        mean = acts.mean(axis=(2, 3), keepdims=True)
        std = ((acts - mean) ** 2).mean(axis=(2, 3), keepdims=True).sqrt()
        threshold = mean + self.k * std
        constant = acts.max(axis=(2, 3), keepdims=True) == acts.min(axis=(2, 3), keepdims=True)
        if self.variant == "xplique":
            kept = ep.logical_or(acts >= threshold, constant).astype(acts.dtype)
            return (mean * kept).sum(axis=1)
        kept = ep.logical_and(acts > threshold, ep.logical_not(constant)).astype(acts.dtype)
        return (kept.mean(axis=(2, 3), keepdims=True) * acts).sum(axis=1).maximum(0.0)


@xt.hookimpl
def register_methods(register: Callable[[str, type], None]) -> None:
    register(EigenCAM.name, EigenCAM)
    register(FEM.name, FEM)
