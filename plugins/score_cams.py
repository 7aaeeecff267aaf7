"""Class activation maps weighted by forward passes: Score-CAM and Ablation-CAM.

Neither differentiates the model. Each feature map ``A^k`` of the layer gets a weight from the
model's score on a modified input — the image masked by the feature map (Score-CAM), or the
layer's activations with the channel switched off (Ablation-CAM) — and the map is the weighted
sum of the feature maps.

Both enumerate the (image, channel) pairs of the whole call and stream them through the model
``batch_size`` at a time across images (:func:`xai_toolbox.extend.chunks`), building each
chunk's masked images or ablated activations on the device from the captured feature maps and
writing its scores into one buffer (:class:`xai_toolbox.extend.PairScores`): memory depends on
``batch_size`` alone, and the scores reach the host never (Ablation-CAM) or once per call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.extend import CAMMethod, Explanation, LayerCapture, Targets


class PairStreamCAM(CAMMethod):
    """A CAM whose weights come from forward passes over (image, channel) pairs.

    The layer is captured in chunks of ``batch_size`` images and the chunks are joined into
    one :class:`~xai_toolbox.extend.LayerCapture` for the call, so the pairs of all images are
    streamed in full chunks of ``batch_size`` (the feature maps are far smaller than the
    masked inputs built from them).

    Example:
        >>> class MyCAM(PairStreamCAM):
        ...     def channel_weights(self, capture):      # capture holds every image of the call
        ...         ...
    """

    needs_gradients = False  # forward passes only: models without gradients work too

    def captures(self, x: ep.Tensor, targets: Targets, layer: str) -> list[LayerCapture]:
        parts = super().captures(x, targets, layer)
        if len(parts) == 1:
            return parts
        joined: dict[str, Any] = {"x": x, "targets": targets}
        for field in dataclasses.fields(parts[0]):
            if field.name in joined:
                continue
            values = [getattr(part, field.name) for part in parts]
            per_image = isinstance(values[0], ep.Tensor)  # the layer name and None are shared
            joined[field.name] = ep.concatenate(values, axis=0) if per_image else values[0]
        return [type(parts[0])(**joined)]

    def passes_per_image(self) -> int | None:
        """``1 + K`` (``K`` channels of the layer), unknown before the model is run."""
        return None

    def pair_chunks(self, n_pairs: int) -> Any:
        """The chunks of ``batch_size`` pairs, with a progress bar when asked."""
        todo = xe.chunks(1, n_pairs, self.batch_size)
        return xe.progress(todo, enabled=self.progress, total=len(todo), desc=self._plugin_name())


class ScoreCAM(PairStreamCAM):
    """Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu — CVPR Workshops 2020).

    Each feature map, upsampled bilinearly to the input and min-max normalised to ``H_k``,
    masks the image; the score of ``x ⊙ H_k`` weighs the feature map:

    * ``variant="official"`` (the authors' code, haofanwang/Score-CAM): ``s_k`` = the class
      probability of ``x ⊙ H_k`` (``activation="softmax"``), feature maps constant over the
      layer's positions are skipped (no pass, weight 0), and
      ``L = ReLU(Σ_k s_k · Up(A^k))`` (ReLU after upsampling).
    * ``variant="pytorch_grad_cam"``: every channel is scored (a constant one masks the image
      to 0), the weights are the softmax *across channels* of the scores, and
      ``L = Up(ReLU(Σ_k w_k A^k))``. pytorch-grad-cam's default scores the raw logit: pass
      ``activation=None`` too.

    Masks multiply the input as given (a 0 is the value 0 in the model's input space). The map
    is not min-max normalised (the official code normalises it for display). Costs ``1 + K``
    forward passes per image (``K`` channels of the layer), streamed ``batch_size`` at a time.

    Args:
        layer: layer whose feature maps mask the image (as for Grad-CAM); default: the last
            spatial layer.
        variant: ``"official"`` or ``"pytorch_grad_cam"`` (see above).
        activation: applied to the model outputs before the target score: ``"softmax"``
            (class probability, the official code), ``None`` (the raw output, e.g. for a
            model that ends in a softmax already) or ``"sigmoid"``.

    Example:
        >>> maps = xt.ScoreCAM(model, layer="layer4", batch_size=128)(images, labels)
        >>> grad_cam_like = xt.ScoreCAM(model, variant="pytorch_grad_cam", activation=None)
    """

    name = "scorecam"

    def __init__(
        self, model: Any, *, variant: str = "official", activation: str | None = "softmax", **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.variant = xe.one_of("variant", variant, ("official", "pytorch_grad_cam"))
        self.activation = xe.activation("activation", activation)

    def explain_batch(self, x: ep.Tensor, targets: Targets) -> Explanation:
        explanation = super().explain_batch(x, targets)
        # The official ReLU comes after upsampling; the other variant's is already applied.
        return Explanation(explanation.maps.maximum(0.0), explanation.extras)

    def cam(self, capture: LayerCapture) -> ep.Tensor:
        combined = (self.channel_weights(capture)[:, :, None, None] * capture.activations).sum(axis=1)
        return combined if self.variant == "official" else combined.maximum(0.0)

    def channel_weights(self, capture: LayerCapture) -> ep.Tensor:
        n, k, h, w = capture.activations.shape
        feature_maps = capture.activations.reshape((n * k, h, w))
        if self.variant == "official":  # one host read per call: which pairs need a pass
            varying = feature_maps.max(axis=(1, 2)) > feature_maps.min(axis=(1, 2))
            pairs = np.flatnonzero(varying.numpy())
        else:
            pairs = np.arange(n * k)
        weights = self.pair_weights(capture, pairs, feature_maps).reshape((n, k))
        return weights if self.variant == "official" else weights.softmax(axis=1)

    def pair_weights(self, capture: LayerCapture, pairs: np.ndarray, feature_maps: ep.Tensor) -> ep.Tensor:
        """The scores of the masked images of ``pairs`` (indices ``image · K + channel``) as a
        ``(N · K,)`` vector, 0 for the pairs not scored."""
        adapter = self.adapter
        k = capture.activations.shape[1]
        size = xe.input_size(capture.x, adapter.channel_axis)
        scores = xe.PairScores(1, len(pairs), adapter)
        for chunk in self.pair_chunks(len(pairs)):
            index = pairs[chunk.start : chunk.stop]
            items = index // k
            masks = xe.normalize_per_item(xe.resize(adapter.take_rows(feature_maps, index), size, "bilinear"))
            masked = adapter.take_rows(capture.x, items) * xe.expand_to_inputs(
                masks, capture.x.ndim, adapter.channel_axis
            )
            outputs = xe.activate(adapter.forward(masked), self.activation)
            scores.put(chunk, capture.targets.take(items).score(outputs))
        if len(pairs) == len(feature_maps):
            return scores.result().reshape((-1,))
        if len(pairs) == 0:  # every feature map constant: nothing to weigh
            return ep.zeros(feature_maps, (len(feature_maps),))
        # Scatter as a gather: pair p reads its score, unscored pairs read the trailing 0.
        position = np.full(len(feature_maps), len(pairs), dtype=np.int64)
        position[pairs] = np.arange(len(pairs))
        padded = ep.concatenate([scores.result().reshape((-1,)), ep.zeros(feature_maps, (1,))], axis=0)
        return adapter.take_rows(padded, position)


@dataclass(frozen=True)
class NativeCapture(LayerCapture):
    """A :class:`~xai_toolbox.extend.LayerCapture` that also keeps the layer's output as the
    model produced it (``native``: the framework's layout, tokens not laid on a grid), which
    is what :meth:`~xai_toolbox.extend.ModelAdapter.forward_with_activations` takes back.

    Example:
        >>> capture.native.shape          # (B, K, h, w), (B, h, w, K) or (B, tokens, K)
    """

    native: ep.Tensor


class AblationCAM(PairStreamCAM):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020).

    ``w_k = (y_c − y_c^{(k)}) / y_c``, with ``y_c`` the explained score and ``y_c^{(k)}`` the
    score when channel ``k`` of the layer is replaced by ``ablation_value`` (the rest of the
    network run on the modified activations); ``L = ReLU(Σ_k w_k A^k)``, upsampled. Where
    ``y_c = 0`` the drops are not divided.

    The activations are captured once; the ``K`` ablated copies of each image's activations
    are streamed ``batch_size`` at a time across images through
    :meth:`~xai_toolbox.extend.ModelAdapter.forward_with_activations`. Costs ``1 + K``
    forward passes per image. On a token layer ``(N, tokens, K)`` channel ``k`` is ablated in
    every token, class tokens included (as pytorch-grad-cam's ``AblationLayerVit``). Dividing
    by ``y_c`` flips every weight when the score is negative (and explodes near 0): explain
    positive scores (logits of the predicted class, or probabilities with a ``score_fn``).

    Args:
        layer: layer whose channels are ablated (as for Grad-CAM); default: the last spatial
            layer (of a transformer: its last token layer).
        ablation_value: the value an ablated channel takes (paper: 0, "off" after a ReLU).
            pytorch-grad-cam uses 0 when the layer's minimum is 0 and ``min − 10⁷`` otherwise.
        reshape: as for Grad-CAM, except a callable: the ablation is written back into the
            layer's own output, whose channel axis a callable does not tell.

    Example:
        >>> maps = xt.AblationCAM(model, layer="layer4", batch_size=128)(images, labels)
    """

    name = "ablationcam"

    def __init__(self, model: Any, *, ablation_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.ablation_value = xe.number("ablation_value", ablation_value)
        if callable(self.reshape):
            raise xt.ParameterError(
                "AblationCAM writes the ablated channels back into the layer's own output, whose "
                "channel axis a reshape= callable does not tell; pass a grid (h, w) or None"
            )

    def capture(self, x: ep.Tensor, targets: Targets, layer: str) -> LayerCapture:
        acts, _, outputs = self.adapter.layer_activations(x, layer)
        return NativeCapture(x, targets, layer, self.feature_maps(x, layer, acts), None, outputs, acts)

    def channel_weights(self, capture: LayerCapture) -> ep.Tensor:
        assert isinstance(capture, NativeCapture)
        adapter = self.adapter
        native = capture.native
        n, k = capture.activations.shape[:2]
        # Where the channels are in the layer's own output: tokens and Keras last, PyTorch 1.
        axis = 1 if native.ndim == 4 and adapter.channel_axis == 1 else native.ndim - 1
        eye = xe.on_device(native, ("ablationcam-eye", k), np.eye(k, dtype=np.float32))
        ablated_scores = xe.PairScores(n, k, adapter)
        for chunk in self.pair_chunks(n * k):
            pairs = np.arange(chunk.start, chunk.stop)
            items = pairs // k
            along = tuple(chunk.size if i == 0 else k if i == axis else 1 for i in range(native.ndim))
            off = adapter.take_rows(eye, pairs % k).reshape(along)  # 1 at the ablated channel
            ablated = adapter.take_rows(native, items) * (1.0 - off) + self.ablation_value * off
            outputs = adapter.forward_with_activations(adapter.take_rows(capture.x, items), capture.layer, ablated)
            ablated_scores.put(chunk, capture.targets.take(items).score(outputs))
        score = capture.targets.score(capture.outputs)[:, None]
        divisor = ep.where(score != 0, score, ep.ones_like(score))
        return (score - ablated_scores.result().reshape((n, k))) / divisor


@xt.hookimpl
def register_methods(register: Callable[[str, type], None]) -> None:
    register(ScoreCAM.name, ScoreCAM)
    register(AblationCAM.name, AblationCAM)
