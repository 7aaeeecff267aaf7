"""Segments: groups of input positions that a method keeps or removes together.

Surrogate methods (LIME, KernelSHAP) and Shapley/ablation methods explain an input through
``M`` interpretable features, its *segments*: grid cells or superpixels of an image, cells
along time of a series, single features (or user-given groups of features) of a tabular row.
A *coalition* is a 0/1 vector over the segments (1 = keep): the perturbed input keeps the
positions of the kept segments and takes the baseline value elsewhere.

* :class:`Segments` holds one label map per input (labels ``0 .. M_i − 1``) and turns a chunk
  of coalitions into masks on the device with one gather (no loop over segments), and
  per-segment values back into maps;
* :func:`grid_labels` and :func:`superpixel_labels` compute label maps (the latter through
  scikit-image, imported only when asked for);
* :class:`SegmentMethod` is the base of methods over segments: the ``segmentation``
  parameters, per-call ``segments=``, the checks before any model call, and
  :meth:`SegmentMethod.coalition_scores`, which streams every input's coalitions through the
  model ``batch_size`` at a time across inputs (the number of coalitions may differ from one
  input to the next) and reads the scores back to the host once per call.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import numpy as np

from . import _validation as v
from ._perturbation import PerturbationMethod, check_grid, perturb
from ._streaming import PairScores, chunks, progress
from ._targets import Targets
from .backends import ModelAdapter
from .backends.adapter import to_numpy
from .errors import InputError, ParameterError
from .ops import interpolation_matrix

#: Named segmentations: a regular grid, or scikit-image superpixels.
SEGMENTATIONS = ("grid", "slic", "quickshift")

#: Keyword arguments given to scikit-image unless ``segmentation_params`` overrides them:
#: SLIC with scikit-image's own defaults (100 segments, compactness 10) and labels from 0;
#: quickshift with the settings of the lime package's ``LimeImageExplainer`` (Ribeiro et al.).
SUPERPIXEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "slic": {"n_segments": 100, "compactness": 10.0, "start_label": 0},
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
}

_CALL_SEGMENTS: contextvars.ContextVar[np.ndarray | None] = contextvars.ContextVar(
    "xai_toolbox_call_segments", default=None
)


# -- label maps ----------------------------------------------------------------------------------
def grid_labels(positions: tuple[int, ...], grid_size: int) -> np.ndarray:
    """Labels of a regular grid over ``positions`` (``(H, W)`` or ``(T,)``): ``grid_size``
    cells per axis, numbered row-major, each position in the cell that nearest-neighbour
    upsampling of the grid puts it in (the cells of Sobol, HSIC and MuFidelity).

    Example:
        >>> grid_labels((4, 4), 2)
        array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [2, 2, 3, 3],
               [2, 2, 3, 3]])
    """
    cells = [np.argmax(interpolation_matrix(grid_size, n, "nearest"), axis=1) for n in positions]
    if len(cells) == 1:
        return cells[0].astype(np.int64)
    return (cells[0][:, None] * grid_size + cells[1][None, :]).astype(np.int64)


def _skimage_segmentation(method: str) -> Any:
    try:
        return importlib.import_module("skimage.segmentation")
    except ImportError:
        raise ParameterError(
            f"segmentation={method!r} needs scikit-image, which is not installed: "
            "pip install scikit-image (or use segmentation='grid', or pass your own segments)"
        ) from None


def superpixel_labels(images: np.ndarray, method: str, params: dict[str, Any] | None = None) -> np.ndarray:
    """Superpixels of channels-last images ``(N, H, W, C)`` by scikit-image: ``(N, H, W)`` labels.

    ``method`` is ``"slic"`` or ``"quickshift"``; ``params`` override
    :data:`SUPERPIXEL_DEFAULTS`. Colour images (3 channels) are segmented in Lab space as
    scikit-image does by default (it expects RGB in [0, 1]); others channel by channel values.

    Example:
        >>> labels = superpixel_labels(images_nhwc, "slic", {"n_segments": 50})
    """
    segmentation = _skimage_segmentation(method)
    kwargs = {**SUPERPIXEL_DEFAULTS[method], **(params or {})}
    if method == "quickshift" and images.shape[-1] != 3:
        kwargs.setdefault("convert2lab", False)  # Lab needs RGB
    fn = getattr(segmentation, method)
    return np.stack([np.asarray(fn(image, **kwargs)) for image in np.asarray(images, dtype=np.float64)])


def check_superpixel_params(method: str, params: dict[str, Any] | None) -> None:
    """Reject keyword arguments that scikit-image's ``method`` does not take (no model call).

    Example:
        >>> check_superpixel_params("slic", {"n_segments": 50})
    """
    fn = getattr(_skimage_segmentation(method), method)
    try:
        inspect.signature(fn).bind(None, **{**SUPERPIXEL_DEFAULTS[method], **(params or {})})
    except TypeError as exc:
        raise ParameterError(f"segmentation_params for {method!r}: {exc}") from None


def segment_labels(name: str, value: Any) -> np.ndarray:
    """Validate user segments: integer labels (NumPy or a native tensor), any values; one map
    of the explanation's shape for every input, or one per input.

    Example:
        >>> segment_labels("segments", np.zeros((2, 16, 16), int)).shape
        (2, 16, 16)
    """
    try:
        labels = np.asarray(to_numpy(value))
    except Exception:
        raise ParameterError(f"{name} must be an integer array of segment labels, got {type(value).__name__}") from None
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer) or labels.ndim == 0:
        raise ParameterError(
            f"{name} must be an integer array of segment labels (one per position), got "
            f"dtype {labels.dtype} and shape {labels.shape}"
        )
    return labels


# -- segments of a batch -------------------------------------------------------------------------
class Segments:
    """Segment labels of a batch: ``M_i`` segments for input ``i``, labelled ``0 .. M_i − 1``.

    Built from any integer labels of shape ``positions`` (one segmentation shared by every
    input) or ``(n_items, *positions)``; the labels of each input are renumbered in
    increasing order, so gaps and negative labels are allowed.

    Example:
        >>> segments = Segments(grid_labels((16, 16), 4), (16, 16), n_items=2)
        >>> segments.counts
        array([16, 16])
        >>> masks = segments.masks(adapter, x, coalitions, items)     # (B, 16, 16) on the device
    """

    def __init__(self, labels: np.ndarray, positions: tuple[int, ...], n_items: int) -> None:
        labels = np.asarray(labels)
        positions = tuple(int(p) for p in positions)
        if labels.shape not in (positions, (n_items, *positions)):
            raise InputError(
                f"segments of shape {labels.shape} do not match the inputs: expected "
                f"{(n_items, *positions)} (one label map per input) or {positions} (one for all)"
            )
        self.positions, self.n_items = positions, n_items
        self.shared = labels.shape == positions
        rows, counts = [], []
        for row in labels.reshape((1 if self.shared else n_items, -1)):
            values, inverse = np.unique(row, return_inverse=True)
            rows.append(inverse.reshape(-1).astype(np.int64))
            counts.append(len(values))
        #: ``(1 or n_items, prod(positions))`` labels ``0 .. M_i − 1``.
        self.labels = np.stack(rows)
        #: ``(n_items,)`` number of segments ``M_i`` of each input.
        self.counts = np.full(n_items, counts[0]) if self.shared else np.asarray(counts)
        self._device: ep.Tensor | None = None

    @property
    def width(self) -> int:
        """The largest number of segments of an input (coalitions are padded to it)."""
        return int(self.counts.max())

    def label_map(self, item: int) -> np.ndarray:
        """Labels of input ``item``, shaped like its explanation."""
        return self.labels[0 if self.shared else item].reshape(self.positions)

    def _label_rows(self, adapter: ModelAdapter, like: ep.Tensor, items: np.ndarray) -> ep.Tensor:
        if self._device is None:  # uploaded once per batch
            self._device = adapter.from_numpy(like, self.labels)
        rows = np.zeros(len(items), dtype=np.int64) if self.shared else np.asarray(items, dtype=np.int64)
        return adapter.take_rows(self._device, rows)

    def masks(self, adapter: ModelAdapter, like: ep.Tensor, coalitions: np.ndarray, items: np.ndarray) -> ep.Tensor:
        """``(B, *positions)`` 0/1 masks on ``like``'s device of the host coalitions ``(B, ≥ M)``
        (row ``b`` over the segments of input ``items[b]``; columns past ``M_i`` unused)."""
        z = adapter.from_numpy(like, np.asarray(coalitions, dtype=np.float32))
        masks = z.take_along_axis(self._label_rows(adapter, like, items), axis=-1)
        return masks.reshape((len(items), *self.positions))

    def paint(self, adapter: ModelAdapter, like: ep.Tensor, values: np.ndarray) -> ep.Tensor:
        """Maps ``(n_items, *positions)`` on ``like``'s device giving every position the value
        of its segment, from per-segment ``values`` ``(n_items, ≥ max M_i)`` on the host."""
        v_dev = adapter.from_numpy(like, np.asarray(values, dtype=np.float32))
        maps = v_dev.take_along_axis(self._label_rows(adapter, like, np.arange(self.n_items)), axis=-1)
        return maps.reshape((self.n_items, *self.positions))


def _runs(items: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """``(item, lo, hi)`` for each run of equal values in the sorted ``items``."""
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
    stops = np.r_[starts[1:], len(items)]
    for lo, hi in zip(starts.tolist(), stops.tolist(), strict=True):
        yield int(items[lo]), lo, hi


#: ``coalitions(item, samples) -> (len(samples), M_item)`` 0/1 array (1 = keep the segment).
Coalitions = Callable[[int, np.ndarray], np.ndarray]
#: ``extra(rows, perturbed) -> (B,)``: one more value per perturbed input, on the device.
PairValue = Callable[[ep.Tensor, ep.Tensor], ep.Tensor]


class SegmentMethod(PerturbationMethod):
    """Base of black-box methods over segments: grid cells, superpixels or given groups.

    The segmentation of a call is, in order of precedence: ``segments=`` given to the call,
    else the ``segmentation`` parameter: ``"grid"`` (``grid_size`` cells per side of an image,
    ``grid_size`` cells along a series, one segment per feature of a tabular row),
    ``"slic"``/``"quickshift"`` (scikit-image superpixels of each image, with
    ``segmentation_params``), or integer labels, one map of the explanation's shape for every
    input or one per input. A subclass builds its coalitions per input and streams them
    through :meth:`coalition_scores`, then paints per-segment values with
    :meth:`Segments.paint`.

    Args:
        segmentation: ``"grid"``, ``"slic"``, ``"quickshift"`` or integer labels.
        grid_size: cells per side of the ``"grid"`` segmentation.
        segmentation_params: keyword arguments of scikit-image's ``slic``/``quickshift``
            (defaults: :data:`SUPERPIXEL_DEFAULTS`).
        baseline: the value of the positions of removed segments.

    Example:
        >>> class Drop(SegmentMethod):                       # score drop per removed segment
        ...     name = "drop"
        ...     def explain_batch(self, x, targets):
        ...         segments = self.segments_of(x)
        ...         counts = segments.counts + 1              # all kept, then each one removed
        ...         def coalitions(item, samples):
        ...             z = np.ones((len(samples), segments.counts[item]))
        ...             z[samples > 0, samples[samples > 0] - 1] = 0
        ...             return z
        ...         scores = self.coalition_scores(x, targets, segments, counts, coalitions)[0]
        ...         drops = np.zeros((len(scores), segments.width))
        ...         for i, y in enumerate(scores):
        ...             drops[i, : len(y) - 1] = y[0] - y[1:]
        ...         return segments.paint(self.adapter, x, drops)
        >>> maps = Drop(model)(images, labels, segments=superpixels)
    """

    def __init__(
        self,
        model: Any,
        *,
        segmentation: str | Any = "grid",
        grid_size: int = 8,
        segmentation_params: dict[str, Any] | None = None,
        baseline: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if isinstance(segmentation, str):
            segmentation = v.one_of("segmentation", segmentation, SEGMENTATIONS)
            if segmentation != "grid" and importlib.util.find_spec("skimage") is None:
                _skimage_segmentation(segmentation)  # the error that says what to install
        else:
            segmentation = segment_labels("segmentation", segmentation)
        self.segmentation = segmentation
        self.grid_size = v.positive_int("grid_size", grid_size)
        if segmentation_params is not None:
            if not isinstance(segmentation_params, dict) or not all(isinstance(k, str) for k in segmentation_params):
                raise ParameterError(
                    f"segmentation_params must be a dict of keyword arguments, got {segmentation_params!r}"
                )
            if not (isinstance(segmentation, str) and segmentation in SUPERPIXEL_DEFAULTS):
                raise ParameterError(
                    "segmentation_params apply to segmentation='slic' or 'quickshift' only "
                    f"(segmentation is {_describe(segmentation)})"
                )
        self.segmentation_params = segmentation_params
        self.baseline = v.number("baseline", baseline)

    # -- per-call segments ---------------------------------------------------------------------
    def __call__(self, inputs: Any, targets: Any = None, *, segments: Any = None) -> Any:
        """Explain ``inputs`` for ``targets``; ``segments`` (integer labels, one map for all
        inputs or one per input) replaces the ``segmentation`` parameter for this call."""
        maps, _ = self.explain_with_extras(inputs, targets, segments=segments)
        return maps

    explain = __call__

    def explain_with_extras(self, inputs: Any, targets: Any = None, *, segments: Any = None) -> tuple[Any, dict[str, Any]]:
        """As :meth:`~xai_toolbox.AttributionMethod.explain_with_extras`, with ``segments=``."""
        labels = None if segments is None else segment_labels("segments", segments)
        token = _CALL_SEGMENTS.set(labels)  # per call and per thread: no instance state
        try:
            return super().explain_with_extras(inputs, targets)
        finally:
            _CALL_SEGMENTS.reset(token)

    def _active(self) -> str | np.ndarray:
        given = _CALL_SEGMENTS.get()
        return self.segmentation if given is None else given

    # -- segmentation ----------------------------------------------------------------------------
    def check_call(self, x: ep.Tensor) -> None:
        positions = self.explanation_shape(x)[1:]
        active = self._active()
        if not isinstance(active, str):
            Segments(active, positions, x.shape[0])  # shape check only
        elif active == "grid":
            if x.ndim == 4:
                check_grid(self.grid_size, positions, self._plugin_name())
            elif x.ndim == 3 and self.grid_size > positions[0]:
                raise ParameterError(
                    f"{self._plugin_name()}: grid_size={self.grid_size} is larger than the series "
                    f"({positions[0]} steps); use grid_size <= {positions[0]}"
                )
        else:
            if x.ndim != 4:
                raise InputError(
                    f"segmentation={active!r} computes superpixels of images; inputs of shape "
                    f"{tuple(x.shape)} are not images: use segmentation='grid' or give segments"
                )
            check_superpixel_params(active, self.segmentation_params)

    def segments_of(self, x: ep.Tensor) -> Segments:
        """The segments of the batch ``x`` for this call (see the class docs)."""
        positions = self.explanation_shape(x)[1:]
        active = self._active()
        if not isinstance(active, str):
            return Segments(active, positions, x.shape[0])
        if active == "grid":
            if x.ndim == 2:  # tabular: one segment per feature
                return Segments(np.arange(positions[0]), positions, x.shape[0])
            return Segments(grid_labels(positions, self.grid_size), positions, x.shape[0])
        images = self.adapter.to_numpy(x)  # one host copy of the inputs, to segment them
        if self.adapter.channel_axis == 1:
            images = np.moveaxis(images, 1, -1)
        return Segments(superpixel_labels(images, active, self.segmentation_params), positions, x.shape[0])

    # -- streaming -------------------------------------------------------------------------------
    def coalition_scores(
        self,
        x: ep.Tensor,
        targets: Targets,
        segments: Segments,
        counts: np.ndarray,
        coalitions: Coalitions,
        extra: PairValue | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """The scores of every input's coalitions: input ``i`` has ``counts[i]`` of them,
        ``coalitions(i, samples)`` gives the rows ``samples`` of its ``(counts[i], M_i)`` 0/1
        matrix (1 = keep the segment; the others take ``baseline``).

        All (input, coalition) pairs are streamed ``batch_size`` at a time across inputs; only
        the coalitions of a chunk cross to the device, the masks are built there, and the
        scores come back to the host once, as float64 arrays ``(counts[i],)``. ``extra(rows,
        perturbed)`` computes one more value per pair on the device (``rows`` the inputs,
        possibly one row broadcast over the chunk); its values come back the same way.
        """
        adapter = self.adapter
        counts = np.asarray(counts, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        total, width = int(offsets[-1]), segments.width
        scores = PairScores(1, total, adapter)  # pairs of every input, in one sequence
        extras = PairScores(1, total, adapter) if extra is not None else None
        todo = chunks(1, total, self.batch_size)
        for chunk in progress(todo, enabled=self.progress, total=len(todo), desc=self._plugin_name()):
            pairs = np.arange(chunk.start, chunk.stop)
            items = np.searchsorted(offsets, pairs, side="right") - 1
            samples = pairs - offsets[items]
            z = np.zeros((chunk.size, width), dtype=np.float32)
            for item, lo, hi in _runs(items):
                z[lo:hi, : segments.counts[item]] = coalitions(item, samples[lo:hi])
            masks = segments.masks(adapter, x, z, items)
            rows = adapter.broadcast_rows(x, items)
            perturbed = perturb(rows, masks, adapter.channel_axis, "inpainting", self.baseline)
            scores.put(chunk, targets.take(items).score(adapter.forward(perturbed)))
            if extras is not None:
                assert extra is not None
                extras.put(chunk, extra(rows, perturbed))
        values = scores.result().numpy().astype(np.float64)[0]  # one host copy per call
        split = [values[offsets[i] : offsets[i + 1]] for i in range(len(counts))]
        if extras is None:
            return split, None
        more = extras.result().numpy().astype(np.float64)[0]
        return split, [more[offsets[i] : offsets[i + 1]] for i in range(len(counts))]


def _describe(segmentation: Any) -> str:
    if isinstance(segmentation, str):
        return repr(segmentation)
    return f"an array of labels of shape {np.shape(segmentation)}"
