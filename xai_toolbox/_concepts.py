"""Concept extraction: the base class of concept methods (CRAFT, ...), their results, and the
non-negative matrix factorisation they are built on.

A concept method finds, in the activations of an inner layer, the few directions (*concepts*)
a model uses for one class, how much each matters for the class score, and where each
appears in an image. Like an attribution method, it is built with its hyper-parameters only
and called on a batch — the images of one class — in the framework's own layout; the base
class validates the inputs and the class before any model call, keeps the model as it found
it, and checks what the plugin returns.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import eagerpy as ep
import numpy as np

from ._targets import Targets, resolve_targets
from .backends.adapter import memory_scope
from .base import _Configurable
from .errors import InputError, ParameterError, PluginError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


@dataclass
class Concepts:
    """What a concept method returns: a bank of concepts of one class and their importance.

    Plugins return a subclass with whatever else they compute (CRAFT: the crops, their
    concept coefficients, concept attribution maps).

    Attributes:
        method: registry name of the concept method.
        class_id: the class the concepts were extracted for, as given.
        bank: ``(r, C)`` NumPy: concept ``i`` is the direction ``bank[i]`` in the ``C``
            channels of the layer's activations.
        importances: ``(r,)`` NumPy: the importance of each concept for the class score.

    Example:
        >>> concepts = xt.concepts("craft", model, layer="layer4")(images, class_id=3)
        >>> concepts.bank.shape, concepts.order[:3]        # the three most important first
    """

    method: str
    class_id: Any
    bank: np.ndarray
    importances: np.ndarray

    @property
    def order(self) -> np.ndarray:
        """Concept indices from the most to the least important."""
        return np.argsort(-np.asarray(self.importances), kind="stable")

    def __len__(self) -> int:
        return int(np.asarray(self.bank).shape[0])

    def top_crops(self, concept: int, k: int = 10) -> np.ndarray:
        """The ``k`` example crops holding the most of ``concept``, ``(k, h, w, C)`` channels
        last (methods that keep example crops override it)."""
        raise NotImplementedError(f"concept method {self.method!r} keeps no example crops")

    def attribution_maps(self, inputs: Any) -> Any:
        """Where each concept appears in ``inputs``, ``(N, r, H, W)`` in the inputs' type
        (methods that locate concepts override it)."""
        raise NotImplementedError(f"concept method {self.method!r} gives no concept attribution maps")

    # -- plots (matplotlib figures, no pyplot state) -------------------------------------
    def plot_importances(self, **kwargs: Any) -> Figure:
        """Bar chart of the importances (see :func:`xai_toolbox.plot_concepts.importances`)."""
        from .plot_concepts import importances

        return importances(self, **kwargs)

    def plot_crops(self, **kwargs: Any) -> Figure:
        """The top crops of the most important concepts (see
        :func:`xai_toolbox.plot_concepts.concept_crops`)."""
        from .plot_concepts import concept_crops

        return concept_crops(self, **kwargs)

    def plot_attribution_maps(self, images: Any, **kwargs: Any) -> Figure:
        """The concepts located in ``images`` (see :func:`xai_toolbox.plot_concepts.concept_maps`)."""
        from .plot_concepts import concept_maps

        return concept_maps(self, images, **kwargs)


class ConceptMethod(_Configurable, ABC):
    """Base class of concept-extraction methods.

    A subclass sets :attr:`name`, declares its own keyword-only hyper-parameters (stored under
    the same names, ``**kwargs`` passed on to this class, which takes ``batch_size``,
    ``score_fn``, ``progress`` and ``framework`` as every method does), and implements
    :meth:`fit_batch`. Calling the method, ``method(images, class_id)``, validates the images
    (a batch in the framework's layout, native or NumPy) and the class, then returns the
    :class:`Concepts` that :meth:`fit_batch` builds.

    Example:
        >>> class MeanConcept(xe.ConceptMethod):
        ...     name = "mean_concept"
        ...     def fit_batch(self, x, targets):
        ...         acts, _, _ = self.adapter.layer_activations(x, "conv2")
        ...         bank = xe.channels_first(acts, self.adapter.channel_axis).mean(axis=(0, 2, 3))
        ...         return xe.Concepts(self.name, targets.labels, bank.numpy()[None], np.ones(1))
    """

    #: Registry name, e.g. ``"craft"``.
    name: ClassVar[str] = ""
    #: Family shown by ``xai-toolbox list``.
    family: ClassVar[str] = "concepts"
    #: Whether the method differentiates the model.
    needs_gradients: ClassVar[bool] = False
    #: Whether the method reads inner layers of the model.
    needs_layers: ClassVar[bool] = True
    #: Whether the result depends on a ``seed`` parameter.
    stochastic: ClassVar[bool] = False
    #: Input kinds the method takes.
    input_kinds: ClassVar[tuple[str, ...]] = ("image",)

    def __call__(self, inputs: Any, class_id: Any) -> Concepts:
        """Extract the concepts of ``class_id`` from ``inputs`` (images of that class).

        ``class_id`` is a class index (or one per image); with a ``score_fn`` it is passed
        to it as the targets.
        """
        result = self.run(inputs, class_id, self.fit_batch)
        self._check_concepts(result)
        return result

    fit = __call__

    def run(
        self, inputs: Any, class_id: Any, fn: Callable[[ep.Tensor, Targets | None], Any], *, targets: bool = True
    ) -> Any:
        """``fn(x, targets)`` on validated inputs, inside the call's model scope: the template
        of every call of a concept method (its results' follow-up calls included).

        The inputs are checked and converted (``x`` on the model's device) and
        :meth:`check_call` runs before any model call; the model is in inference mode and
        left as found; an out-of-memory pass is retried on smaller batches. With
        ``targets=False`` no class is resolved and ``fn`` gets ``None``.

        Example:
            >>> maps = self.run(images, None, lambda x, _: self._maps(x), targets=False)
        """
        adapter = self.adapter
        if self.needs_gradients and not adapter.supports_gradients:
            raise UnsupportedModelError(f"{self._plugin_name()}: {adapter.no_gradients_message()}")
        inputs, x = self._prepare(inputs)
        with self.preserved(), memory_scope():
            resolved = self.resolve_targets(x, class_id) if targets else None
            return self._run_plugin("concept method", fn, x, resolved)

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Every model of the method in inference mode for a call, restored afterwards
        (override when the method holds more than :attr:`model`)."""
        with self.adapter.preserved():
            yield

    def resolve_targets(self, x: ep.Tensor, class_id: Any) -> Targets:
        """``class_id`` as :class:`~xai_toolbox.extend.Targets` for the batch ``x`` (checked
        against the model's outputs; override when the outputs come from another model). One
        class given as a number is the class of every image."""
        return resolve_targets(self.adapter, x, per_image(class_id, int(x.shape[0])), self.score_fn, self.batch_size)

    def passes_per_image(self) -> int | None:
        """Model passes per image at these parameters, where known in advance."""
        return None

    @abstractmethod
    def fit_batch(self, x: ep.Tensor, targets: Targets) -> Concepts:
        """The concepts of the validated batch ``x`` (on the model's device) for ``targets``."""

    def _check_concepts(self, result: Any) -> None:
        name = self._plugin_name()
        if not isinstance(result, Concepts):
            raise PluginError(
                f"concept method {name!r} returned {type(result).__name__}; expected Concepts "
                "(xai_toolbox.extend.Concepts or a subclass)"
            )
        bank, importances = np.asarray(result.bank), np.asarray(result.importances)
        if bank.ndim != 2 or importances.shape != (bank.shape[0],):
            raise PluginError(
                f"concept method {name!r} returned a bank of shape {bank.shape} and importances "
                f"of shape {importances.shape}; expected (r, C) and (r,)"
            )
        if not (np.all(np.isfinite(bank)) and np.all(np.isfinite(importances))):
            raise PluginError(f"concept method {name!r} returned NaN or infinite values")


def per_image(class_id: Any, n: int) -> Any:
    """One class given as a plain number, repeated for ``n`` images (anything else as given).

    Example:
        >>> per_image(3, 2)
        array([3, 3])
    """
    if isinstance(class_id, int | float | np.integer | np.floating) and not isinstance(class_id, bool):
        return np.full(n, class_id)
    return class_id


@dataclass
class Factorization:
    """A non-negative factorisation ``A ≈ U W`` of activations ``A`` ``(n, C)``.

    Attributes:
        coefficients: ``U`` ``(n, r)``, non-negative: how much of each concept every row holds.
        bank: ``W`` ``(r, C)``, non-negative: the concepts.
        solver: the fitted :class:`sklearn.decomposition.NMF`.

    Example:
        >>> f = fit_nmf(activations, rank=10, seed=0)
        >>> u_new = f.transform(more_activations)      # coefficients with the bank fixed
    """

    coefficients: np.ndarray
    bank: np.ndarray
    solver: Any = field(repr=False)

    def transform(self, activations: np.ndarray) -> np.ndarray:
        """Coefficients ``U`` ``(m, r)`` of new activations ``(m, C)``, the bank fixed (the
        same non-negative least squares, with the same regularisation, as the fit)."""
        a = _non_negative(activations)
        return np.asarray(self.solver.transform(a), dtype=np.float64)


def fit_nmf(
    activations: Any,
    rank: int,
    *,
    alpha: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = 0,
) -> Factorization:
    """Non-negative matrix factorisation of ``activations`` ``(n, C)`` into ``rank`` concepts,
    by scikit-learn's :class:`~sklearn.decomposition.NMF` (coordinate descent, Frobenius loss).

    scikit-learn's defaults otherwise: initialisation ``nndsvda`` when ``rank <= min(n, C)``
    (deterministic), else random (seeded by ``seed``). ``alpha`` is ``alpha_W`` (with
    ``alpha_H="same"`` and an L2 penalty), as CRAFT's official TensorFlow code and Xplique
    use it (``1e-2``); 0 is the official PyTorch code's. Computed in float64 on the host.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'xai-toolbox[concepts]'``).
        InputError: ``activations`` are not a non-negative ``(n, C)`` array.

    Example:
        >>> a = np.abs(np.random.default_rng(0).normal(size=(40, 8)))
        >>> f = fit_nmf(a, rank=3)
        >>> f.coefficients.shape, f.bank.shape
        ((40, 3), (3, 8))
    """
    try:
        from sklearn.decomposition import NMF
    except ImportError as exc:
        raise ImportError(
            "concept extraction needs scikit-learn's NMF: pip install 'xai-toolbox[concepts]' "
            "(or pip install scikit-learn)"
        ) from exc
    a = _non_negative(activations)
    rank = int(rank)
    if rank < 1:
        raise ParameterError(f"the number of concepts must be at least 1, got {rank}")
    solver = NMF(
        n_components=rank, alpha_W=float(alpha), alpha_H="same", l1_ratio=0.0,
        max_iter=int(max_iter), tol=float(tol), random_state=seed,
    )
    coefficients = solver.fit_transform(a)
    return Factorization(np.asarray(coefficients, dtype=np.float64), np.asarray(solver.components_, dtype=np.float64), solver)


def _non_negative(activations: Any) -> np.ndarray:
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"activations to factorise must be (n, C), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError("activations to factorise contain NaN or infinite values")
    if a.size and a.min() < 0:
        raise InputError(
            f"a non-negative factorisation needs non-negative activations; the smallest is {a.min():.3g} "
            "(take the activations after a ReLU)"
        )
    return a
