"""Two attribution methods written on the public extension API only.

* :class:`CenterPrior` — the "center baseline" of the pointing-game literature (Zhang et al.
  2016): a Gaussian bump in the middle of the image, whatever the model says. Any explanation
  worth using should beat it on localisation metrics.
* :class:`MaskedCAM` — a Score-CAM-like CAM (Wang et al., CVPR-W 2020, as pytorch-grad-cam
  computes it): each feature map of the layer, upsampled and min-max normalised, masks the
  image; the masked images' scores, softmaxed across channels, weigh the feature maps. Forward
  passes only, streamed ``batch_size`` masked images at a time across images.
"""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe


class CenterPrior(xt.AttributionMethod):
    """A centred Gaussian map with standard deviation ``sigma`` × the image side.

    Example:
        >>> maps = xt.method("center_prior", model, sigma=0.25)(images)
    """

    name = "center_prior"

    def __init__(self, model: Any, *, sigma: float = 0.25, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.sigma = xe.in_range("sigma", sigma, 0.0, 10.0)

    def explain_batch(self, x: ep.Tensor, targets: xe.Targets) -> ep.Tensor:
        shape = self.explanation_shape(x)
        grids = np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in shape[1:]], indexing="ij")
        bump = np.exp(-sum(g**2 for g in grids) / (2 * self.sigma**2)).astype(np.float32)
        return self.adapter.from_numpy(x, np.broadcast_to(bump, shape).copy())


class MaskedCAM(xe.CAMMethod):
    """Score-CAM-like: feature maps weighted by the softmax, across channels, of the scores of
    the image masked by each of them (see the module docs).

    Args:
        layer: the layer whose feature maps mask the image (default: the last spatial layer).

    Example:
        >>> maps = xt.method("masked_cam", model, layer="conv2")(images, labels)
    """

    name = "masked_cam"
    needs_gradients = False  # forward passes only: models without gradients work too

    def channel_weights(self, capture: xe.LayerCapture) -> ep.Tensor:
        adapter = self.adapter
        b, k, h, w = capture.activations.shape
        # (image, channel) pairs in order: a chunk of pairs is a contiguous run of feature maps.
        feature_maps = capture.activations.reshape((b * k, h, w))
        size = xe.input_size(capture.x, adapter.channel_axis)
        scores = xe.PairScores(b, k, adapter)
        for chunk in xe.chunks(b, k, self.batch_size):
            one = feature_maps[chunk.start : chunk.stop]                 # (chunk, h, w)
            masks = xe.normalize_per_item(xe.resize(one, size, "bilinear"))
            masked = adapter.take_rows(capture.x, chunk.items) * xe.expand_to_inputs(
                masks, capture.x.ndim, adapter.channel_axis
            )
            scores.put(chunk, capture.targets.take(chunk.items).score(adapter.forward(masked)))
        return scores.result().softmax(axis=1)
