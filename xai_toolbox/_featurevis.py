"""Feature visualisation: the base class of methods that synthesise an image the model responds
to (MACO, ...), the objectives they maximise, and their result.

An objective is a score of one synthetic input: a class logit, the mean activation of one
channel of an inner layer, or the alignment of a layer's activations with a direction. It is
bound to a model once (names resolved, indices checked, before the optimisation runs) and then
evaluated inside :meth:`~xai_toolbox.extend.ModelAdapter.value_and_grad`, so its gradient with
respect to the input comes from the framework — the same code for every framework.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import eagerpy as ep
import numpy as np

from . import _validation as v
from ._targets import Targets
from .backends import ModelAdapter
from .backends.adapter import memory_scope, to_numpy
from .base import _Configurable
from .errors import (
    LayerError,
    ParameterError,
    PluginError,
    ScoreFunctionError,
    UnsupportedModelError,
)
from .ops import channels_first

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: What an objective scores: ``"logit"``, ``"log_probability"``, ``"channel"`` or ``"direction"``.
OBJECTIVE_KINDS = ("logit", "log_probability", "channel", "direction")
_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class Objective:
    """What a feature visualisation maximises, built with :meth:`logit`,
    :meth:`log_probability`, :meth:`channel` or :meth:`direction` (an int given where an
    objective is expected means :meth:`logit`).

    Example:
        >>> xt.Objective.logit(3)                              # the class-3 logit
        >>> xt.Objective.log_probability(3)                    # class 3 against the others
        >>> xt.Objective.channel("layer4", 12)                 # mean of channel 12 of layer4
        >>> xt.Objective.direction("layer4", concepts.bank[0]) # a CRAFT concept
    """

    kind: str
    index: int | None = None
    layer: str | None = None
    vector: np.ndarray | None = None

    @classmethod
    def logit(cls, class_id: int) -> Objective:
        """The model's output ``class_id`` (pre-softmax logits, as the MACO paper recommends
        over probabilities; with a ``score_fn``, ``score_fn(outputs, class_ids)`` instead):
        what drives this one output unit. A logit is not a contrast between classes — it can
        rise with other classes' logits when their weights are correlated — so the image need
        not be classified as ``class_id``; for that, use :meth:`log_probability`.

        Example:
            >>> Objective.logit(2).describe()
            'logit 2'
        """
        return cls("logit", index=v.non_negative_int("class_id", class_id))

    @classmethod
    def log_probability(cls, class_id: int) -> Objective:
        """The log-softmax of the outputs at ``class_id``: the class logit minus the
        log-sum-exp of all of them, so it rises only when the class gains on the others (a
        logit alone can rise with other classes' logits when their weights are correlated).
        The objective for "what makes the model say ``class_id``": on the demo model, MACO's
        visualisations of the triangle and cross logits are classified as ring (their own
        class's probability below 1e-18), those of their log-probabilities as triangle and
        cross (above 0.96 over six seeds); measured in ``docs/concepts/maco.md``.

        Example:
            >>> Objective.log_probability(2).describe()
            'log-probability of class 2'
        """
        return cls("log_probability", index=v.non_negative_int("class_id", class_id))

    @classmethod
    def channel(cls, layer: str, channel: int) -> Objective:
        """The mean over positions of channel ``channel`` of ``layer``'s activations (for a
        layer without positions, ``(N, C)``, the unit itself).

        Example:
            >>> Objective.channel("conv3", 5).describe()
            "channel 5 of 'conv3'"
        """
        return cls("channel", index=v.non_negative_int("channel", channel), layer=_layer(layer))

    @classmethod
    def direction(cls, layer: str, vector: Any) -> Objective:
        """The cosine similarity between ``layer``'s activations and ``vector`` ``(C,)`` placed
        at every position (as Xplique's ``Objective.direction``): a direction in the
        layer's channel space, such as a CRAFT concept.

        Example:
            >>> Objective.direction("conv3", np.ones(64)).describe()
            "direction in 'conv3'"
        """
        vec = np.asarray(to_numpy(vector), dtype=np.float32)
        if vec.ndim != 1 or vec.size == 0:
            raise ParameterError(f"a direction is a vector (C,) over the layer's channels, got shape {vec.shape}")
        if not np.all(np.isfinite(vec)) or not np.any(vec):
            raise ParameterError("a direction must be finite and not all zeros")
        return cls("direction", layer=_layer(layer), vector=vec)

    @classmethod
    def coerce(cls, objective: Any) -> Objective:
        """``objective`` as an :class:`Objective` (an int is a logit), or a
        :class:`~xai_toolbox.errors.ParameterError`.

        Example:
            >>> Objective.coerce(3).kind
            'logit'
        """
        if isinstance(objective, Objective):
            return objective
        if isinstance(objective, int | np.integer) and not isinstance(objective, bool | np.bool_):
            return cls.logit(int(objective))
        raise ParameterError(
            "objective must be an xt.Objective (Objective.logit(c), Objective.channel(layer, k), "
            f"Objective.direction(layer, vector)) or a class index; got {type(objective).__name__}"
        )

    def describe(self) -> str:
        """A short label, for titles and messages."""
        if self.kind == "logit":
            return f"logit {self.index}"
        if self.kind == "log_probability":
            return f"log-probability of class {self.index}"
        if self.kind == "channel":
            return f"channel {self.index} of {self.layer!r}"
        return f"direction in {self.layer!r}"

    def bind(self, adapter: ModelAdapter, like: ep.Tensor, score_fn: Any = None) -> Callable[[ep.Tensor], ep.Tensor]:
        """The objective on ``adapter``'s model as ``fn(z) -> (B,)``, one value per row of
        ``z``, to call inside :meth:`~xai_toolbox.extend.ModelAdapter.value_and_grad`.

        Checks first, on the one-input batch ``like``: the layer name (before any model call;
        the error lists the model's layers), the class or channel index, the direction's
        length.

        Example:
            >>> fn = Objective.channel("conv2", 3).bind(adapter, like)
            >>> values, grads = adapter.value_and_grad(fn, images)
        """
        if self.kind not in OBJECTIVE_KINDS:
            raise ParameterError(f"unknown objective kind {self.kind!r}; expected one of {OBJECTIVE_KINDS}")
        if self.kind in ("logit", "log_probability"):
            return self._bind_class(adapter, like, score_fn)
        if score_fn is not None:
            raise ParameterError(f"score_fn scores model outputs; a {self.kind} objective scores a layer's activations")
        assert self.layer is not None
        layer = adapter.resolve_layer(self.layer)
        acts, _, _ = adapter.layer_activations(like, layer)
        if acts.ndim not in (2, 4):
            raise LayerError(
                f"layer {layer!r} gives activations of shape {tuple(acts.shape)}; a {self.kind} "
                "objective needs (N, C) or image-like (N, C, H, W) / (N, H, W, C) activations"
            )
        width = int(acts.shape[1] if acts.ndim == 2 else acts.shape[adapter.channel_axis])
        axis = adapter.channel_axis
        if self.kind == "channel":
            k = int(self.index or 0)
            if k >= width:
                raise ParameterError(f"channel {k} is out of range: layer {layer!r} has {width} channels")

            def channel(z: ep.Tensor) -> ep.Tensor:
                a, _ = adapter.differentiable_activations(z, layer)
                return a[:, k] if a.ndim == 2 else channels_first(a, axis)[:, k].mean(axis=(1, 2))

            return channel
        assert self.vector is not None
        if self.vector.shape[0] != width:
            raise ParameterError(
                f"the direction has {self.vector.shape[0]} values but layer {layer!r} has {width} channels"
            )
        vec = self.vector

        def direction(z: ep.Tensor) -> ep.Tensor:
            a, _ = adapter.differentiable_activations(z, layer)
            a = channels_first(a, axis) if a.ndim == 4 else a
            d = adapter.from_numpy(a, vec)
            d = d.reshape((1, -1) + (1,) * (a.ndim - 2))
            axes = tuple(range(1, a.ndim))
            positions = float(np.prod(a.shape[2:])) if a.ndim == 4 else 1.0
            norm_d = float(np.linalg.norm(vec)) * positions**0.5
            norm_a = ((a * a).sum(axis=axes) + _EPS).sqrt()
            return (a * d).sum(axis=axes) / (norm_a * norm_d)

        return direction

    def _bind_class(self, adapter: ModelAdapter, like: ep.Tensor, score_fn: Any) -> Callable[[ep.Tensor], ep.Tensor]:
        c = int(self.index or 0)
        if score_fn is not None:
            if self.kind != "logit":
                raise ParameterError("score_fn replaces the logit objective's score: use Objective.logit with it")

            def scored(z: ep.Tensor) -> ep.Tensor:
                outputs = adapter.differentiable_forward(z)
                labels = adapter.from_numpy(outputs, np.full(outputs.shape[0], c, dtype=np.int64))
                return Targets(outputs.shape[0], raw=labels.raw, score_fn=score_fn).score(outputs)

            return scored
        width = adapter.output_width()
        if width is None:
            outputs = adapter.forward(like)
            if outputs.ndim != 2:
                raise ScoreFunctionError(
                    f"the model returned outputs of shape {tuple(outputs.shape)}; a logit objective "
                    "needs (N, K) outputs — pass score_fn=... for other outputs"
                )
            width = int(outputs.shape[1])
        if c >= width:
            raise ParameterError(f"class {c} is out of range for a model with {width} outputs")
        if self.kind == "log_probability":
            return lambda z: adapter.differentiable_forward(z).log_softmax(axis=1)[:, c]
        return lambda z: adapter.differentiable_forward(z)[:, c]


def _layer(layer: Any) -> str:
    if not isinstance(layer, str) or not layer:
        raise ParameterError(f"layer must be a layer name (a non-empty string), got {layer!r}")
    return layer


@dataclass
class Visualization:
    """What a feature visualisation returns.

    Attributes:
        method: registry name of the method.
        objective: the :class:`Objective` maximised.
        image: ``(H, W, C)`` float32 NumPy, channels last, in the method's value range.
        model_input: the image resized to the model's input, ``(1, *input_shape)``, as a
            native tensor in the model's layout: feed it to the model to see its verdict.
        transparency: ``(H, W, C)`` NumPy, non-negative: where the objective's gradient was
            large during the optimisation (``None`` if the method has none).
        history: the objective's value at each step (NumPy).
        values_range: ``(low, high)`` of the image's values.

    Example:
        >>> vis = xt.featurevis("maco", model)(xt.Objective.log_probability(3), input_shape=(3, 224, 224))
        >>> model(vis.model_input).argmax()                        # the model's own verdict
        >>> vis.plot().savefig("class3.png")
    """

    method: str
    objective: Objective
    image: np.ndarray
    model_input: Any
    transparency: np.ndarray | None = None
    history: np.ndarray | None = None
    values_range: tuple[float, float] = (0.0, 1.0)

    def alpha(self, percentile: float = 80.0) -> np.ndarray:
        """The transparency map ``(H, W)`` in ``[0, 1]``: the channel mean of
        :attr:`transparency` clipped at its ``percentile`` and divided by its maximum (as
        Xplique's ``plot_maco``); ones when there is no transparency."""
        if self.transparency is None:
            return np.ones(self.image.shape[:2], dtype=np.float32)
        t = np.asarray(self.transparency, dtype=np.float64).mean(axis=-1)
        t = np.minimum(t, np.percentile(t, float(percentile)))
        top = t.max()
        return (t / top if top > 0 else np.ones_like(t)).astype(np.float32)

    def display(self, *, transparency: bool = True, percentile: float = 80.0) -> np.ndarray:
        """The image as RGB ``(H, W, 3)`` in ``[0, 1]`` for display: values below the 1st
        percentile clipped, min-max rescaled, and (``transparency``) multiplied by
        :meth:`alpha` — what the model responds to stands out, the rest fades to black."""
        img = np.asarray(self.image, dtype=np.float64)
        img = np.clip(img, np.percentile(img, 1.0), None)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        if transparency:
            img = img * self.alpha(percentile)[..., None]
        return img[..., :3].astype(np.float32)

    def plot(self, *, transparency: bool = True, percentile: float = 80.0, title: str | None = None) -> Figure:
        """A figure of the visualisation (see :func:`xai_toolbox.plot_concepts.featurevis`)."""
        from .plot_concepts import featurevis

        return featurevis(self, transparency=transparency, percentile=percentile, title=title)


class FeatureVisualization(_Configurable, ABC):
    """Base class of feature-visualisation methods.

    A subclass sets :attr:`name`, declares its own keyword-only hyper-parameters (stored under
    the same names, ``**kwargs`` passed on) and implements :meth:`visualize`. Calling it,
    ``method(objective, input_shape)``, checks the objective and the model's input shape
    (one image in the framework's layout, e.g. ``(3, 224, 224)`` for PyTorch,
    ``(224, 224, 3)`` for Keras) before any optimisation, and returns a :class:`Visualization`.

    Example:
        >>> class Ascent(xe.FeatureVisualization):
        ...     name = "ascent"
        ...     def visualize(self, like, score, objective):
        ...         x = like
        ...         for _ in range(10):
        ...             _, g = self.adapter.value_and_grad(score, x)
        ...             x = x + 0.1 * g
        ...         image = xe.to_numpy(xe.channels_first(x, self.adapter.channel_axis))[0]
        ...         return xe.Visualization(self.name, objective, image.transpose(1, 2, 0),
        ...                                 self.adapter.restore(x, like.raw))
    """

    #: Registry name, e.g. ``"maco"``.
    name: ClassVar[str] = ""
    #: Family shown by ``xai-toolbox list``.
    family: ClassVar[str] = "featurevis"
    #: Feature visualisation optimises an input: the model must be differentiable.
    needs_gradients: ClassVar[bool] = True
    #: Whether every objective needs inner layers (channel and direction objectives do).
    needs_layers: ClassVar[bool] = False
    #: Whether the result depends on a ``seed`` parameter.
    stochastic: ClassVar[bool] = True
    #: Input kinds the method synthesises.
    input_kinds: ClassVar[tuple[str, ...]] = ("image",)

    def __call__(self, objective: Any, input_shape: Any) -> Visualization:
        """Synthesise an input maximising ``objective`` for a model taking inputs of
        ``input_shape`` (one image, the framework's layout)."""
        adapter = self.adapter
        if not adapter.supports_gradients:
            raise UnsupportedModelError(f"{self._plugin_name()}: {adapter.no_gradients_message()}")
        objective = Objective.coerce(objective)
        shape = _input_shape(input_shape)
        _, like = self._prepare(np.zeros((1, *shape), dtype=np.float32))
        if objective.layer is not None:
            adapter.resolve_layer(objective.layer)  # an unknown name fails before any model call
        with adapter.preserved(), memory_scope():
            score = objective.bind(adapter, like, self.score_fn)
            result = self._run_plugin("feature visualisation", self.visualize, like, score, objective)
        self._check_visualization(result, like)
        return result

    def passes_per_image(self) -> int | None:
        """Forward and backward passes per visualisation at these parameters, where known."""
        return None

    @abstractmethod
    def visualize(self, like: ep.Tensor, score: Callable[[ep.Tensor], ep.Tensor], objective: Objective) -> Visualization:
        """The visualisation for the bound objective ``score`` (``fn(z) -> (B,)``, to use
        inside ``value_and_grad``); ``like`` is a zero input ``(1, *input_shape)`` on the
        model's device, for shapes and placement."""

    def _check_visualization(self, result: Any, like: ep.Tensor) -> None:
        name = self._plugin_name()
        if not isinstance(result, Visualization):
            raise PluginError(
                f"feature visualisation {name!r} returned {type(result).__name__}; expected a "
                "Visualization (xai_toolbox.extend.Visualization)"
            )
        image = np.asarray(result.image)
        if image.ndim != 3 or not np.all(np.isfinite(image)):
            raise PluginError(
                f"feature visualisation {name!r} returned an image of shape {image.shape}; "
                "expected finite values (H, W, C)"
            )
        given = tuple(int(d) for d in to_numpy(result.model_input).shape)
        if given != tuple(like.shape):
            raise PluginError(
                f"feature visualisation {name!r} returned a model input of shape {given}; expected {tuple(like.shape)}"
            )


def _input_shape(value: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in value)
        ok = len(shape) >= 1 and all(d > 0 for d in shape) and all(float(d) == int(d) for d in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(
            "input_shape must be the shape of one model input without the batch axis, e.g. "
            f"(3, 224, 224) for PyTorch or (224, 224, 3) for Keras; got {value!r}"
        )
    return shape
