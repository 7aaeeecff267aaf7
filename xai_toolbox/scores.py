"""Built-in task scores: what is explained beyond image classification.

Every attribution method explains one scalar per input, ``score_fn(outputs, targets) -> (N,)``
(Xplique calls it an *operator*, pytorch-grad-cam a *target*): white-box methods differentiate
it, black-box methods compare it across perturbed inputs, metrics track it. The classes here
are such callables, written once with EagerPy so they run on every framework's outputs, for
every method and metric:

* :class:`Regression` — one output, a chosen output of a multi-output regressor, or a
  direction in output space;
* :class:`MultiLabel` — the (sigmoid) scores of several labels per input;
* :class:`Segmentation` — a class over a region of a segmentation model's output map
  (:func:`class_region` builds the targets);
* :class:`Detection` — the D-RISE score of an object detector (IoU × objectness × class
  similarity, best predicted box per reference box, mean over reference boxes), with
  :class:`DetectionOutputs` to turn the ``(boxes, scores, labels)`` of torchvision-style
  detectors into the boxes it reads.

Example:
    >>> import xai_toolbox as xt
    >>> maps = xt.Saliency(regressor, score_fn=xt.scores.Regression())(x)
    >>> maps = xt.Rise(detector, score_fn=xt.scores.Detection(), output=xt.scores.DetectionOutputs(80))(
    ...     images, reference_boxes)

Any other function ``score_fn(outputs, targets) -> (N,)`` of native tensors works the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import eagerpy as ep
import numpy as np

from ._validation import non_negative_int, one_of, positive_int
from .errors import ParameterError, ScoreFunctionError, TargetError

__all__ = ["Detection", "DetectionOutputs", "MultiLabel", "Regression", "Segmentation", "class_region"]

#: Added to denominators, as in the D-RISE operator of Xplique.
EPS = 1e-4


def _like(outputs: ep.Tensor, values: Any, what: str) -> ep.Tensor:
    """``values`` (a native tensor, NumPy or nested lists) as a float32 tensor beside ``outputs``."""
    if values is None:
        raise TargetError(f"this score needs targets ({what}); pass them as the method's targets")
    try:
        t = ep.astensor(values)
    except ValueError:  # NumPy or lists
        array = np.asarray(values, dtype=np.float32)
        return ep.from_numpy(outputs, array)
    return t.astype(outputs.dtype) if t.dtype != outputs.dtype else t


class Regression:
    """Explain a regressor's output: its value (one output), output ``index`` of a
    multi-output regressor, or the projection on a ``direction`` of the output space.

    ``score = y`` for outputs ``(N,)`` / ``(N, 1)``; ``y[:, index]``; ``Σ_k y_k · d_k``. With
    none of ``index``/``direction`` and several outputs, the targets choose per input (an
    index ``(N,)`` or weights ``(N, K)``), as for classifiers (Xplique's regression operator).
    Source: Xplique, ``Tasks.REGRESSION`` (the deprecated MAE operator is not used: its
    gradient vanishes at the unperturbed input).

    Args:
        index: the output to explain (multi-output regression).
        direction: weights ``(K,)`` of the outputs (e.g. ``[1, -1]`` for a difference).

    Example:
        >>> maps = xt.IntegratedGradients(model, score_fn=xt.scores.Regression(index=2))(x)
    """

    def __init__(self, *, index: int | None = None, direction: Any = None) -> None:
        if index is not None and direction is not None:
            raise ParameterError("Regression takes index= or direction=, not both")
        self.index = None if index is None else non_negative_int("index", index)
        self.direction = None if direction is None else np.asarray(direction, dtype=np.float32)
        if self.direction is not None and (self.direction.ndim != 1 or not np.all(np.isfinite(self.direction))):
            raise ParameterError(f"direction must be a finite vector (K,), got shape {self.direction.shape}")

    def __call__(self, outputs: Any, targets: Any = None) -> Any:
        y = ep.astensor(outputs)
        if y.ndim == 1:
            return y.raw
        if y.ndim != 2:
            raise ScoreFunctionError(
                f"Regression explains outputs (N,) or (N, K); got shape {tuple(y.shape)} "
                "(Segmentation explains output maps)"
            )
        k = y.shape[1]
        if self.index is not None:
            if self.index >= k:
                raise ScoreFunctionError(f"Regression(index={self.index}) for a model with {k} outputs")
            return y[:, self.index].raw
        if self.direction is not None:
            if len(self.direction) != k:
                raise ScoreFunctionError(f"direction has {len(self.direction)} values for {k} outputs")
            return (y * ep.from_numpy(y, self.direction)[None]).sum(axis=1).raw
        if k == 1:
            return y[:, 0].raw
        if targets is None:
            raise TargetError(
                f"the model has {k} outputs: pass Regression(index=...) or direction=..., or targets "
                "(an output index per input, or weights (N, K))"
            )
        t = _like(y, targets, "output indices or weights")
        if t.ndim == 1:
            t = (t[:, None] == ep.arange(y, k)[None].astype(t.dtype)).astype(y.dtype)
        return (y * t).sum(axis=1).raw

    def __repr__(self) -> str:
        return f"Regression(index={self.index}, direction={None if self.direction is None else self.direction.tolist()})"


class MultiLabel:
    """Explain several labels of a multi-label classifier at once:
    ``score = Σ_k σ(z_k) · t_k`` with ``t`` the targets' multi-hot (or weight) rows.

    Targets: ``(N, K)`` multi-hot or weights, or one list of label indices per input
    (``[[0, 3], [2]]``; equal-length lists may be padded with ``-1``). Source: Xplique's classification operator on sigmoid outputs;
    pytorch-grad-cam's ``ClassifierOutputTarget`` summed over labels.

    Args:
        activation: ``"sigmoid"`` (the model returns logits, as multi-label models trained
            with a binary cross-entropy on logits do) or ``None`` (outputs used as given).

    Example:
        >>> maps = xt.GradCAM(model, score_fn=xt.scores.MultiLabel())(x, [[0, 3], [2]])
    """

    def __init__(self, *, activation: str | None = "sigmoid") -> None:
        self.activation = one_of("activation", activation, ("sigmoid", None))

    def __call__(self, outputs: Any, targets: Any = None) -> Any:
        z = ep.astensor(outputs)
        if z.ndim != 2:
            raise ScoreFunctionError(f"MultiLabel explains outputs (N, K); got shape {tuple(z.shape)}")
        p = 1.0 / (1.0 + ep.exp(-z)) if self.activation == "sigmoid" else z
        return (p * self.weights(z, targets)).sum(axis=1).raw

    @staticmethod
    def weights(z: ep.Tensor, targets: Any) -> ep.Tensor:
        """The targets as ``(N, K)`` weights beside the outputs ``z``."""
        n, k = z.shape
        if not (isinstance(targets, Sequence) and not isinstance(targets, str)):
            t = _like(z, targets, "multi-hot rows (N, K) or lists of labels")
            if t.ndim == 2 and t.shape[1] != k:  # equal-length label lists, made a tensor on the way
                targets = [[int(label) for label in r if label >= 0] for r in t.numpy()]
            else:
                targets = t
        if isinstance(targets, Sequence) and any(isinstance(row, Sequence | np.ndarray) for row in targets):
            hot = np.zeros((len(targets), k), np.float32)
            for i, labels in enumerate(targets):
                labels = np.asarray(labels, dtype=np.int64).reshape(-1)
                if labels.size and (labels.min() < 0 or labels.max() >= k):
                    raise TargetError(f"label indices of input {i} must lie in 0..{k - 1}, got {labels.tolist()}")
                hot[i, labels] = 1.0
            t = ep.from_numpy(z, hot)
        else:
            t = targets if isinstance(targets, ep.Tensor) else _like(z, targets, "multi-hot rows (N, K)")
        if tuple(t.shape) != (n, k):
            raise TargetError(f"MultiLabel targets must be (N, K) = ({n}, {k}) or label lists; got {tuple(t.shape)}")
        return t

    def __repr__(self) -> str:
        return f"MultiLabel(activation={self.activation!r})"


def class_region(masks: Any, classes: Any, n_classes: int, *, channel_axis: int = 1) -> np.ndarray:
    """Targets for :class:`Segmentation`: class ``classes[i]`` over the region ``masks[i]``,
    as weights shaped like the model's output maps.

    Args:
        masks: ``(N, H, W)`` region of each input in the output map (booleans or 0/1; a
            value of ``-1`` marks a contrastive region, as Xplique's borders).
        classes: ``(N,)`` class of each input (or one int for all).
        n_classes: ``K``, channels of the output map.
        channel_axis: where the classes sit in the output: ``1`` for ``(N, K, H, W)``
            (PyTorch models), ``-1`` for ``(N, H, W, K)`` (Keras models).

    Example:
        >>> targets = xt.scores.class_region(road_mask, 7, 19)      # (N, 19, H, W)
    """
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3:
        raise TargetError(f"masks must be (N, H, W), got shape {masks.shape}")
    n = masks.shape[0]
    classes = np.broadcast_to(np.asarray(classes, dtype=np.int64), (n,))
    positive_int("n_classes", n_classes)
    if classes.min() < 0 or classes.max() >= n_classes:
        raise TargetError(f"classes must lie in 0..{n_classes - 1}, got {classes.tolist()}")
    one_of("channel_axis", channel_axis, (1, -1, 3))
    weights = np.zeros((n, n_classes, *masks.shape[1:]), np.float32)
    weights[np.arange(n), classes] = masks
    return weights if channel_axis == 1 else np.ascontiguousarray(np.moveaxis(weights, 1, -1))


class Segmentation:
    """Explain a class over a region of a semantic segmentation model's output map:
    ``score = Σ f(x) ⊙ t / #{t ≠ 0}`` (``reduction="mean"``, Xplique's semantic segmentation
    operator) or ``Σ f(x) ⊙ t`` (``"sum"``, pytorch-grad-cam's ``SemanticSegmentationTarget``).

    Targets are weights shaped like the outputs (``(N, K, H, W)`` or ``(N, H, W, K)``): 1 on
    the class channel inside the region, 0 elsewhere (``-1`` for a contrastive region); build
    them with :func:`class_region`. Explain positive outputs (softmax probabilities) so the
    region's mean is not dominated by its logits' sign.

    Args:
        reduction: ``"mean"`` (default, Xplique) or ``"sum"`` (pytorch-grad-cam).

    Example:
        >>> targets = xt.scores.class_region(masks, classes, n_classes=21)
        >>> maps = xt.Rise(model, score_fn=xt.scores.Segmentation())(images, targets)
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        self.reduction = one_of("reduction", reduction, ("mean", "sum"))

    def __call__(self, outputs: Any, targets: Any = None) -> Any:
        y = ep.astensor(outputs)
        t = _like(y, targets, "weights shaped like the output maps, see xt.scores.class_region")
        if tuple(t.shape) != tuple(y.shape):
            raise TargetError(
                f"Segmentation targets must have the outputs' shape {tuple(y.shape)}; got {tuple(t.shape)} "
                "(build them with xt.scores.class_region(masks, classes, n_classes, channel_axis=...))"
            )
        flat = (y * t).reshape((y.shape[0], -1)).sum(axis=1)
        if self.reduction == "sum":
            return flat.raw
        count = (t != 0).astype(y.dtype).reshape((y.shape[0], -1)).sum(axis=1)
        return (flat / ep.maximum(count, 1.0)).raw

    def __repr__(self) -> str:
        return f"Segmentation(reduction={self.reduction!r})"


def box_iou(a: ep.Tensor, b: ep.Tensor) -> ep.Tensor:
    """IoU of every pair of boxes ``(x1, y1, x2, y2)``: ``a (N, R, 4)``, ``b (N, P, 4)`` →
    ``(N, R, P)``, ``inter / (area_a + area_b − inter + 1e-4)`` (Xplique's D-RISE).

    Example:
        >>> box_iou(ep.astensor(np.array([[[0., 0, 2, 2]]])), ep.astensor(np.array([[[1., 1, 3, 3]]])))
    """
    a, b = a[:, :, None, :], b[:, None, :, :]
    dx = ep.minimum(a[..., 2], b[..., 2]) - ep.maximum(a[..., 0], b[..., 0])
    dy = ep.minimum(a[..., 3], b[..., 3]) - ep.maximum(a[..., 1], b[..., 1])
    inter = ep.maximum(dx, 0.0) * ep.maximum(dy, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter + EPS)


class Detection:
    """The D-RISE score of an object detector (Petsiuk et al., "Black-box Explanation of Object
    Detectors via Saliency Maps", CVPR 2021; Xplique's object-detection operator).

    The model returns boxes before non-maximum suppression, ``(N, boxes, 4 + 1 + K)`` rows
    ``[x1, y1, x2, y2, objectness, class scores…]`` (use ``output=``
    :class:`DetectionOutputs` for ``(boxes, scores, labels)`` detectors). Targets are the
    reference boxes in the same format, ``(N, R, 4 + 1 + K)`` or ``(N, 4 + 1 + K)``;
    all-zero rows are padding. For a reference ``r`` and a prediction ``p``:

        s(r, p) = IoU(r, p) · objectness(p) · cos(classes(r), classes(p))

    with ``cos = ⟨c_r, c_p⟩ / (‖c_r‖‖c_p‖ + 1e-4)``; the score of an input is the mean over
    its references of the best prediction, 0 without reference. With RISE this is D-RISE;
    gradient methods differentiate the same score.

    Args:
        components: the factors used: ``("iou", "objectness", "class")`` (D-RISE, default);
            drop ``"objectness"`` or ``"class"`` for Xplique's box-position / box-class
            variants.

    Example:
        >>> refs = xt.scores.DetectionOutputs(80)(model(images))[:, :1]        # the top box
        >>> maps = xt.Rise(model, score_fn=xt.scores.Detection(),
        ...                output=xt.scores.DetectionOutputs(80))(images, refs)
    """

    def __init__(self, *, components: Sequence[str] = ("iou", "objectness", "class")) -> None:
        components = tuple(components)
        for c in components:
            one_of("components", c, ("iou", "objectness", "class"))
        if "iou" not in components:
            raise ParameterError("components must include 'iou' (the score is per pair of boxes)")
        self.components = components

    def __call__(self, outputs: Any, targets: Any = None) -> Any:
        pred = ep.astensor(outputs)
        if pred.ndim != 3 or pred.shape[2] < 5:
            raise ScoreFunctionError(
                f"Detection needs outputs (N, boxes, 4 + 1 + classes), got shape {tuple(pred.shape)}; "
                "for (boxes, scores, labels) detectors pass output=xt.scores.DetectionOutputs(n_classes)"
            )
        ref = _like(pred, targets, "reference boxes (N, R, 4 + 1 + classes)")
        if ref.ndim == 2:
            ref = ref[:, None, :]
        if ref.ndim != 3 or ref.shape[0] != pred.shape[0] or ref.shape[2] != pred.shape[2]:
            raise TargetError(
                f"reference boxes must be (N, R, {pred.shape[2]}) like the outputs' rows; got {tuple(ref.shape)}"
            )
        if pred.shape[1] == 0 or ref.shape[1] == 0:
            return ep.zeros(pred, (pred.shape[0],)).raw
        s = box_iou(ref[..., :4], pred[..., :4])                                   # (N, R, P)
        if "objectness" in self.components:
            s = s * pred[:, None, :, 4]
        if "class" in self.components:
            cr, cp = ref[..., 5:], pred[..., 5:]
            dot = (cr[:, :, None, :] * cp[:, None, :, :]).sum(axis=-1)
            norms = cr.square().sum(axis=-1).sqrt()[:, :, None] * cp.square().sum(axis=-1).sqrt()[:, None, :]
            s = s * dot / (norms + EPS)
        valid = (ref != 0).any(axis=-1).astype(pred.dtype)                           # (N, R)
        best = s.max(axis=2) * valid
        return (best.sum(axis=1) / ep.maximum(valid.sum(axis=1), 1.0)).raw

    def __repr__(self) -> str:
        return f"Detection(components={self.components!r})"


class DetectionOutputs:
    """``output=`` converter for detectors returning ``(boxes, scores, labels)``: one dict
    per image with those keys (torchvision), or a tuple/dict of batched tensors
    ``boxes (N, B, 4)``, ``scores (N, B)``, ``labels (N, B)``; gives the rows
    :class:`Detection` reads, ``(N, max_boxes, 4 + 1 + n_classes)`` with the score as
    objectness and the one-hot label as class scores, zero rows as padding.

    Boxes are ``(x1, y1, x2, y2)``. Scores and boxes keep their gradients (a detector's
    post-processing is differentiable almost everywhere), so gradient methods work too; for
    D-RISE proper, give the model's boxes before non-maximum suppression where it can.

    Args:
        n_classes: ``K``, the number of classes (labels ``0..K−1``).
        max_boxes: boxes kept per image (the first ones: detectors sort them by score).

    Example:
        >>> convert = xt.scores.DetectionOutputs(91)
        >>> refs = convert(torchvision_model(images))        # (N, 100, 96) reference rows
    """

    def __init__(self, n_classes: int, *, max_boxes: int = 100) -> None:
        self.n_classes = positive_int("n_classes", n_classes)
        self.max_boxes = positive_int("max_boxes", max_boxes)

    def __call__(self, outputs: Any) -> Any:
        per_image = self._per_image(outputs)
        rows = [self._rows(boxes, scores, labels) for boxes, scores, labels in per_image]
        return ep.stack(rows, axis=0).raw

    def _per_image(self, outputs: Any) -> list[tuple[Any, Any, Any]]:
        keys = ("boxes", "scores", "labels")
        if isinstance(outputs, Sequence) and outputs and all(isinstance(o, Mapping) for o in outputs):
            return [tuple(o[k] for k in keys) for o in outputs]  # type: ignore[misc]
        if isinstance(outputs, Mapping) and all(k in outputs for k in keys):
            boxes, scores, labels = (outputs[k] for k in keys)
        elif isinstance(outputs, Sequence) and len(outputs) == 3:
            boxes, scores, labels = outputs
        else:
            raise ScoreFunctionError(
                "DetectionOutputs reads one dict per image with 'boxes', 'scores', 'labels', or "
                f"batched (boxes, scores, labels); got {type(outputs).__name__}"
            )
        return [(boxes[i], scores[i], labels[i]) for i in range(int(ep.astensor(boxes).shape[0]))]

    def _rows(self, boxes: Any, scores: Any, labels: Any) -> ep.Tensor:
        b, s, lab = ep.astensor(boxes), ep.astensor(scores), ep.astensor(labels)
        count = min(int(b.shape[0]), self.max_boxes)
        b, s, lab = b[:count], s[:count], lab[:count]
        classes = ep.arange(b, self.n_classes)
        onehot = (lab.astype(classes.dtype)[:, None] == classes[None, :]).astype(b.dtype)
        rows = ep.concatenate([b, s.astype(b.dtype)[:, None], onehot], axis=1)
        if count < self.max_boxes:
            rows = ep.concatenate([rows, ep.zeros(b, (self.max_boxes - count, 5 + self.n_classes))], axis=0)
        return rows

    def __repr__(self) -> str:
        return f"DetectionOutputs({self.n_classes}, max_boxes={self.max_boxes})"

