"""CRAFT — Concept Recursive Activation FacTorization (Fel, Picard, Béthune, Boissin,
Vigouroux, Colin, Cadène, Serre — CVPR 2023; arXiv 2211.10154).

The model is split at a layer into ``g`` (input → non-negative activations) and ``h``
(activations → logits). Crops of the images of one class go through ``g``; their activations,
averaged over positions, are factorised as ``A ≈ U W`` with ``U, W ≥ 0`` (scikit-learn's NMF):
the rows of ``W`` are the class's *concepts*, ``U`` how much of each a crop holds. A concept's
importance is its total-order Sobol index for the class score when the concept coefficients of
an image are modulated by quasi-random masks, ``h((U ⊙ m) W)``, the same estimator as the Sobol
attribution method. Where a concept appears in an image is its coefficient ``U(x)`` at each
position of the layer (the official notebooks' and Xplique's concept attribution maps).

Everything that touches a tensor is written once in EagerPy; ``g`` and ``h`` are the adapter's
``layer_activations`` and ``forward_with_activations`` (or two models given by the user), so
PyTorch and Keras twins find the same concepts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import eagerpy as ep
import numpy as np

import xai_toolbox as xt
from xai_toolbox import extend as xe
from xai_toolbox.plugins.sobol import jansen_total_order, replicated_rows, sobol_design

#: How crops are placed: uniformly at random (the paper), or a sliding window (the official code).
CROPS = ("random", "grid")


class Craft(xe.ConceptMethod):
    """CRAFT (Fel et al., CVPR 2023): the concepts a model uses for a class, their importance
    (Sobol total indices) and where they appear.

    The model is split at ``layer`` (``g`` = the layer's activations, which must be
    non-negative: take the output of a ReLU; ``h`` = the rest of the network run on given
    activations), or given as two models: ``model`` = ``g`` and ``head`` = ``h``, of the same
    framework. Calling it on images of one class, ``craft(images, class_id)``, returns
    :class:`CraftConcepts`.

    Args:
        layer: where to split the model (default: the last layer with a spatial output).
            Must be ``None`` when ``head`` is given.
        head: ``h`` as a model of its own (``model`` is then ``g``).
        number_of_concepts: ``r``, the rank of the factorisation (official code and
            Xplique: 20; the official notebooks: 10).
        patch_size: side of the square crops, in pixels (official: 64 at 224×224).
        crops: ``"random"`` — ``nb_crops`` crops per image at uniformly random positions (the
            paper's "random crops") — or ``"grid"`` — a sliding window with stride
            ``int(0.8 · patch_size)`` (the official code).
        nb_crops: crops per image with ``crops="random"`` (16: the grid's count at 224/64).
        nb_design: ``N``, points of the Sobol design (a power of two, as Xplique: 32).
        nmf_alpha: ``alpha_W`` of the NMF (official TF code and Xplique: 1e-2; official
            PyTorch code: 0).
        nmf_max_iter: iterations of the NMF solver (scikit-learn's default, 200).
        seed: crop positions (per image, so the same in any batch) and the NMF's random
            initialisation when it has one.

    Costs per image: ``nb_crops`` passes of ``g`` over resized crops, one over the image and
    ``nb_design · (r + 2)`` passes of ``h`` (on the whole model with a ``layer``).

    Example:
        >>> craft = xt.concepts("craft", model, layer="layer4", number_of_concepts=10)
        >>> concepts = craft(images_of_class_3, class_id=3)
        >>> concepts.importances[concepts.order]            # most important first
        >>> maps = concepts.attribution_maps(images_of_class_3)   # (N, r, H, W)
        >>> concepts.plot_crops().savefig("concepts.png")
    """

    name = "craft"
    stochastic = True

    def __init__(
        self,
        model: Any,
        *,
        layer: str | None = None,
        head: Any = None,
        number_of_concepts: int = 20,
        patch_size: int = 64,
        crops: str = "random",
        nb_crops: int = 16,
        nb_design: int = 32,
        nmf_alpha: float = 1e-2,
        nmf_max_iter: int = 200,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.layer = xe.layer_name("layer", layer)
        if head is not None and layer is not None:
            raise xt.ParameterError(
                "give either layer= (the model is split there) or head= (the model is g and head is h), not both"
            )
        self.head = head
        self.number_of_concepts = xe.positive_int("number_of_concepts", number_of_concepts)
        self.patch_size = xe.positive_int("patch_size", patch_size)
        self.crops = xe.one_of("crops", crops, CROPS)
        self.nb_crops = xe.positive_int("nb_crops", nb_crops)
        self.nb_design = xe.power_of_two("nb_design", nb_design)
        if self.nb_design < 2:
            raise xt.ParameterError("nb_design must be at least 2 (the estimator needs a variance)")
        self.nmf_alpha = xe.in_range("nmf_alpha", nmf_alpha, 0.0, float("inf"), inclusive=True)
        self.nmf_max_iter = xe.positive_int("nmf_max_iter", nmf_max_iter)
        self.seed = seed

    def passes_per_image(self) -> int | None:
        if self.crops == "grid":
            return None  # depends on the image size
        return self.nb_crops + 1 + self.nb_design * (self.number_of_concepts + 2)

    # -- the split model ----------------------------------------------------------------
    @property
    def head_adapter(self) -> xe.ModelAdapter | None:
        """The adapter of ``head`` (``None`` when the model is split at a layer)."""
        if self.head is None:
            return None
        adapter = self.__dict__.get("_head_adapter")
        if adapter is None:
            adapter = xe.adapt(self.head, self.framework)
            if adapter.framework != self.adapter.framework:
                raise xt.ParameterError(
                    f"head is a {adapter.display_name} model but model is a {self.adapter.display_name} "
                    "model; g and h must be models of one framework"
                )
            self.__dict__["_head_adapter"] = adapter
        return adapter

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.adapter.preserved())
            if self.head_adapter is not None:
                stack.enter_context(self.head_adapter.preserved())
            yield

    def check_call(self, x: ep.Tensor) -> None:
        size = xe.image_size(x, self.adapter.channel_axis, self.name)
        if self.patch_size > min(size):
            raise xt.ParameterError(f"patch_size={self.patch_size} is larger than the images ({size[0]}×{size[1]})")
        # Building the head's adapter checks its framework; an unknown layer name fails here,
        # both before any model call.
        if self.head_adapter is None and self.layer is not None:
            self.adapter.resolve_layer(self.layer)

    def resolve_targets(self, x: ep.Tensor, class_id: Any) -> xe.Targets:
        if self.head_adapter is None:
            return super().resolve_targets(x, class_id)
        return _head_targets(self, x, class_id)

    def _layer(self, x: ep.Tensor) -> str | None:
        if self.head is not None:
            return None
        return self.adapter.resolve_layer(self.layer) if self.layer is not None else self.adapter.default_layer(x)

    def latent(self, x: ep.Tensor, layer: str | None) -> ep.Tensor:
        """``g(x)``: the activations, in the framework's layout, of one pass."""
        if layer is None:
            return self.adapter.forward(x)
        acts, _, _ = self.adapter.layer_activations(x, layer)
        return acts

    def logits(self, x: ep.Tensor, layer: str | None, acts: ep.Tensor) -> ep.Tensor:
        """``h(acts)``; with a layer, the rest of the network on ``acts`` (``x`` rows alongside)."""
        if layer is None:
            assert self.head_adapter is not None
            return self.head_adapter.forward(acts)
        return self.adapter.forward_with_activations(x, layer, acts)

    # -- fit ----------------------------------------------------------------------------
    def fit_batch(self, x: ep.Tensor, targets: xe.Targets) -> CraftConcepts:
        layer = self._layer(x)
        origins = self.crop_origins(x)
        crop_acts, lowest = self._crop_activations(x, origins, layer)
        if lowest < 0:
            raise xt.LayerError(
                f"CRAFT needs non-negative activations (the output of a ReLU); "
                f"{'layer ' + repr(layer) if layer else 'g'} gives values down to {lowest:.3g}"
            )
        factorization = xe.fit_nmf(
            crop_acts, self.number_of_concepts, alpha=self.nmf_alpha, max_iter=self.nmf_max_iter, seed=self.seed
        )
        coefficients = self._image_coefficients(x, layer, factorization)
        per_image = self._sobol_importances(x, layer, coefficients, factorization.bank, targets)
        return CraftConcepts(
            method=self.name,
            class_id=_as_given(targets),
            bank=factorization.bank,
            importances=per_image.mean(axis=0),
            layer=layer,
            crops=_crop_pixels(xe.to_numpy(x), origins, self.patch_size, self.adapter.channel_axis),
            crop_origins=origins,
            crop_coefficients=factorization.coefficients,
            image_importances=per_image,
            factorization=factorization,
            craft=self,
        )

    def crop_origins(self, x: ep.Tensor) -> np.ndarray:
        """``(M, 3)`` integer rows ``(image, top, left)`` of the crops of the batch ``x``.

        Random positions are drawn per image from ``seed`` and the image's index, so they do
        not depend on ``batch_size``.
        """
        height, width = xe.image_size(x, self.adapter.channel_axis, self.name)
        p = self.patch_size
        rows = []
        for i in range(int(x.shape[0])):
            if self.crops == "grid":
                stride = max(1, int(0.8 * p))
                tops, lefts = np.meshgrid(np.arange(0, height - p + 1, stride), np.arange(0, width - p + 1, stride), indexing="ij")
                tops, lefts = tops.ravel(), lefts.ravel()
            else:
                rng = np.random.default_rng(None if self.seed is None else xe.item_seed(self.seed, i))
                tops = rng.integers(0, height - p + 1, self.nb_crops)
                lefts = rng.integers(0, width - p + 1, self.nb_crops)
            rows.append(np.stack([np.full(len(tops), i), tops, lefts], axis=1))
        return np.concatenate(rows).astype(np.int64)

    def _crop_activations(self, x: ep.Tensor, origins: np.ndarray, layer: str | None) -> tuple[np.ndarray, float]:
        """Spatial means of ``g`` over the crops resized to the image size ``(M, C)``, and the
        smallest activation seen."""
        axis = self.adapter.channel_axis
        size = xe.image_size(x, axis, self.name)
        means, lowest = [], []
        todo = list(range(0, len(origins), self.batch_size))
        for start in xe.progress(todo, enabled=self.progress, total=len(todo), desc=f"{self.name} crops"):
            crops = _crop_batch(x, origins[start : start + self.batch_size], self.patch_size, size, axis)
            acts = self.latent(crops, layer)
            lowest.append(acts.min())
            means.append(_positions_mean(acts, axis))
        acts = ep.concatenate(means, axis=0) if len(means) > 1 else means[0]
        return xe.to_numpy(acts).astype(np.float64), float(xe.to_numpy(ep.stack(lowest)).min())

    def _image_coefficients(self, x: ep.Tensor, layer: str | None, factorization: xe.Factorization) -> np.ndarray:
        """``U(x)``: concept coefficients at every position of the layer, ``(N, h, w, r)``
        (``(N, r)`` for activations without positions)."""
        axis = self.adapter.channel_axis
        parts = [self.latent(x[s : s + self.batch_size], layer) for s in range(0, int(x.shape[0]), self.batch_size)]
        acts = ep.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        if acts.ndim == 4:
            acts = xe.channels_first(acts, axis).transpose((0, 2, 3, 1))  # (N, h, w, C)
        elif acts.ndim != 2:
            raise xt.LayerError(
                f"CRAFT factorises (N, C) or image-like activations; got shape {tuple(acts.shape)}"
            )
        a = xe.to_numpy(acts).astype(np.float64)
        if a.size and a.min() < 0:
            raise xt.LayerError(f"CRAFT needs non-negative activations; got values down to {a.min():.3g}")
        u = factorization.transform(a.reshape(-1, a.shape[-1]))
        return u.reshape(*a.shape[:-1], -1)

    def _sobol_importances(
        self, x: ep.Tensor, layer: str | None, coefficients: np.ndarray, bank: np.ndarray, targets: xe.Targets
    ) -> np.ndarray:
        """Per-image total Sobol indices ``(N, r)`` of the concepts for the class score of
        ``h((U ⊙ m) W)``, masks ``m`` from the replicated Sobol design (one mask value per
        concept, the same at every position)."""
        adapter = self.adapter
        n, r, nd = int(x.shape[0]), bank.shape[0], self.nb_design
        ab = sobol_design(nd, 2 * r).astype(np.float32)
        a, b = ab[:, :r], ab[:, r:]
        per_item = nd * (r + 2)
        u_all = adapter.from_numpy(x, coefficients.astype(np.float32))
        w = adapter.from_numpy(x, bank.astype(np.float32))
        spatial = u_all.ndim == 4
        scores = xe.PairScores(n, per_item, adapter)
        todo = xe.chunks(n, per_item, self.batch_size)
        for chunk in xe.progress(todo, enabled=self.progress, total=len(todo), desc=f"{self.name} importance"):
            masks = adapter.from_numpy(x, replicated_rows(a, b, chunk.samples))        # (B, r)
            u = adapter.broadcast_rows(u_all, chunk.items)
            if spatial:
                acts = xe.matmul(u * masks[:, None, None, :], w)                     # (B, h, w, C)
                acts = acts.transpose((0, 3, 1, 2)) if adapter.channel_axis == 1 else acts
            else:
                acts = xe.matmul(u * masks, w)                                        # (B, C)
            outputs = self.logits(adapter.take_rows(x, chunk.items), layer, acts)
            scores.put(chunk, targets.take(chunk.items).score(outputs))
        y = scores.result()
        return xe.to_numpy(jansen_total_order(y[:, :nd], y[:, 2 * nd :], nd)).astype(np.float64)

    def _attribution_maps(self, x: ep.Tensor, concepts: CraftConcepts) -> ep.Tensor:
        coefficients = self._image_coefficients(x, concepts.layer, concepts.factorization)
        if coefficients.ndim != 4:
            raise xt.LayerError(
                "concept attribution maps need activations with positions; these are (N, C) "
                "(split the model at a spatial layer)"
            )
        u = self.adapter.from_numpy(x, np.ascontiguousarray(coefficients.transpose(0, 3, 1, 2), dtype=np.float32))
        # Bilinear keeps the non-negative coefficients non-negative (bicubic overshoots).
        return xe.resize(u, xe.image_size(x, self.adapter.channel_axis, self.name), "bilinear")


def _head_targets(craft: Craft, x: ep.Tensor, class_id: Any) -> xe.Targets:
    """Targets for a model given as ``g`` and ``h``: checked against ``h``'s outputs."""
    n = int(x.shape[0])
    if np.ndim(class_id) == 0 and class_id is not None:
        class_id = np.full(n, class_id)
    if craft.score_fn is not None:
        if class_id is not None and len(class_id) != n:
            raise xt.TargetError(f"got {len(class_id)} targets for {n} inputs; pass one per input")
        return xe.Targets(n, raw=class_id, score_fn=craft.score_fn)
    labels = None if class_id is None else np.asarray(xe.to_numpy(class_id))
    if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iuf" or np.any(labels != np.round(labels)):
        raise xt.TargetError(f"class_id must be a class index (or one per image), got {class_id!r}")
    labels = labels.astype(np.int64)
    if labels.shape != (n,):
        raise xt.TargetError(f"got {labels.shape[0]} class ids for {n} inputs; pass one per input (or an int)")
    assert craft.head_adapter is not None
    outputs = craft.head_adapter.forward(craft.adapter.forward(x[:1]))
    if outputs.ndim != 2:
        raise xt.ScoreFunctionError(
            f"head returned outputs of shape {tuple(outputs.shape)}; class ids need (N, K) outputs — pass score_fn=..."
        )
    width = int(outputs.shape[1])
    if labels.min() < 0 or labels.max() >= width:
        raise xt.TargetError(f"class id out of range for a head with {width} outputs; valid ids are 0..{width - 1}")
    onehot = np.eye(width, dtype=np.float32)[labels]
    return xe.Targets(n, weights=craft.adapter.from_numpy(x, onehot), labels=labels)


def _as_given(targets: xe.Targets) -> Any:
    """The class the concepts are for: one int when every image has the same label."""
    if targets.labels is not None and len(targets.labels) and np.all(targets.labels == targets.labels[0]):
        return int(targets.labels[0])
    return targets.native()


def _positions_mean(acts: ep.Tensor, axis: int) -> ep.Tensor:
    """``(B, C)``: activations averaged over their positions (as they are when ``(B, C)``)."""
    if acts.ndim == 2:
        return acts
    if acts.ndim != 4:
        raise xt.LayerError(f"CRAFT factorises (N, C) or image-like activations; got shape {tuple(acts.shape)}")
    return xe.channels_first(acts, axis).mean(axis=(2, 3))


def _crop_batch(x: ep.Tensor, origins: np.ndarray, p: int, size: tuple[int, int], axis: int) -> ep.Tensor:
    """The crops ``(image, top, left)`` of ``x``, ``p × p``, resized (bilinear, as the
    official PyTorch code) to the image size, in the framework's layout."""
    parts = []
    for i, top, left in origins:
        i, top, left = int(i), int(top), int(left)
        if axis == 1:
            parts.append(x[i : i + 1, :, top : top + p, left : left + p])
        else:
            parts.append(x[i : i + 1, top : top + p, left : left + p, :].transpose((0, 3, 1, 2)))
    crops = xe.resize(ep.concatenate(parts, axis=0) if len(parts) > 1 else parts[0], size, "bilinear")
    return crops if axis == 1 else crops.transpose((0, 2, 3, 1))


def _crop_pixels(images: np.ndarray, origins: np.ndarray, p: int, axis: int) -> np.ndarray:
    """The crops at their own resolution, ``(M, p, p, C)`` channels last, for display."""
    if axis == 1:
        images = np.moveaxis(images, 1, -1)
    return np.stack([images[i, t : t + p, left : left + p] for i, t, left in origins]).astype(np.float32)


@dataclass
class CraftConcepts(xe.Concepts):
    """CRAFT's result (see :class:`xai_toolbox.extend.Concepts` for ``bank``, ``importances``
    and ``order``).

    Attributes:
        layer: where the model was split (``None`` for a model given as ``g`` and ``h``).
        crops: ``(M, p, p, C)`` NumPy, the crops the concepts were fitted on, channels last.
        crop_origins: ``(M, 3)`` rows ``(image, top, left)`` of the crops.
        crop_coefficients: ``(M, r)`` ``U`` of the crops.
        image_importances: ``(N, r)`` Sobol total indices per image (``importances`` is
            their mean).
        factorization: the fitted NMF (:class:`xai_toolbox.extend.Factorization`).

    Example:
        >>> concepts = xt.Craft(model, layer="layer4")(images, class_id=3)
        >>> best = concepts.order[0]
        >>> concepts.top_crops(best, 8).shape                  # (8, 64, 64, 3)
        >>> maps = concepts.attribution_maps(images)           # (N, r, H, W)
    """

    layer: str | None
    crops: np.ndarray
    crop_origins: np.ndarray
    crop_coefficients: np.ndarray
    image_importances: np.ndarray
    factorization: xe.Factorization = field(repr=False)
    craft: Craft = field(repr=False)

    def top_crops(self, concept: int, k: int = 10) -> np.ndarray:
        """The ``k`` crops holding the most of ``concept``, ``(k, p, p, C)``, most first."""
        concept = self._concept(concept)
        k = min(xe.positive_int("k", k), len(self.crops))
        order = np.argsort(-self.crop_coefficients[:, concept], kind="stable")[:k]
        return self.crops[order]

    def transform(self, inputs: Any) -> np.ndarray:
        """``U(x)`` of new images: ``(N, h, w, r)`` coefficients at every position of the
        layer (``(N, r)`` without positions), NumPy."""
        return self._run(inputs, lambda x: self.craft._image_coefficients(x, self.layer, self.factorization))

    def attribution_maps(self, inputs: Any) -> Any:
        """Where each concept appears: ``(N, r, H, W)`` — the coefficients ``U(x)`` at every
        position of the layer, resized bilinearly to the image — in the inputs' type."""
        maps = self._run(inputs, lambda x: self.craft._attribution_maps(x, self))
        return self.craft.adapter.restore(maps, inputs)

    def estimate_importance(self, inputs: Any) -> np.ndarray:
        """Sobol total indices ``(N, r)`` of the concepts for other images of the class."""

        def estimate(x: ep.Tensor, targets: xe.Targets) -> np.ndarray:
            u = self.craft._image_coefficients(x, self.layer, self.factorization)
            return self.craft._sobol_importances(x, self.layer, u, self.bank, targets)

        return self.craft.run(inputs, self.class_id, estimate)

    def _concept(self, concept: Any) -> int:
        value = xe.non_negative_int("concept", concept)
        if value >= len(self):
            raise xt.ParameterError(f"concept {value} is out of range: there are {len(self)} concepts")
        return value

    def _run(self, inputs: Any, fn: Callable[[ep.Tensor], Any]) -> Any:
        return self.craft.run(inputs, None, lambda x, _: fn(x), targets=False)


@xt.hookimpl
def register_concepts(register: Callable[[str, type], None]) -> None:
    register(Craft.name, Craft)
