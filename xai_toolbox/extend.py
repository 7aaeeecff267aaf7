"""The extension API: everything a method, metric or adapter plugin is built from.

The built-in methods and metrics import nothing else from the engine: this module, the flat
:mod:`xai_toolbox` API, EagerPy, NumPy and SciPy are all they use (the lint env enforces it),
so a third-party plugin stands on exactly the same floor.

What is here, by purpose:

* **Base classes**: :class:`AttributionMethod`, :class:`Metric` (and :class:`MetricResult`),
  :class:`MethodMetric` for metrics that re-run a method, :class:`PerturbationMethod` for
  black-box methods, :class:`CAMMethod` (with :class:`LayerCapture`) for class activation maps,
  :class:`Explanation` for maps with auxiliary outputs; :class:`ConceptMethod` (results
  :class:`Concepts`) for concept extraction and :class:`FeatureVisualization` (results
  :class:`Visualization`, objectives :class:`Objective`) for feature visualisation.
* **Targets and scores**: :class:`Targets` (scores, input gradients, layer gradients through
  the adapter's fast paths), :func:`weighted_score`, :data:`ScoreFn`.
* **Streaming**: :func:`chunks` / :class:`Chunk` (model inputs cut in ``batch_size`` across
  images), the in-place accumulators :class:`ItemSums` and :class:`PairScores`,
  :func:`stream_scores`, :func:`batched_forward`, :func:`batched_scores`, :func:`index_column`, :func:`progress`;
  :func:`built_scores` (a chunk's inputs built on the device, the forward pass and the score
  as one pass the adapter may compile: :meth:`ModelAdapter.forward_built`).
* **Adaptive sampling** (``nb_samples="auto"``): :func:`sample_count`, :func:`sample_schedule`
  / :class:`SampleSchedule` (rounds ending at fixed checkpoints, :func:`checkpoints`), whose
  :class:`SampleRound` / :class:`SampleChunk` stream the images still running,
  :func:`relative_error` (a map's standard error over its spread),
  :func:`correlation_standard_error`, :func:`sample_counts`, :data:`AUTO`.
* **Perturbations and randomness**: :class:`BlockSampler` (draws reproducible for any
  chunking), :func:`perturb`, :func:`reference_images`, :func:`upsample_nearest`,
  :func:`image_size`, :func:`check_grid`, :func:`perturbation_params`,
  :func:`cell_geometry` / :func:`upsample_cells` (grids over images, segments of time of
  series, one cell per feature of tabular rows); noise sources
  :class:`HostNoise`, :class:`DeviceNoise`, :func:`noise_source`, :func:`standard_normal`,
  :func:`item_seed`.
* **Segments** (methods over grid cells, superpixels or feature groups):
  :class:`SegmentMethod` (segmentation parameters, per-call ``segments=``, streaming of
  coalitions), :class:`Segments`, :func:`grid_labels`, :func:`superpixel_labels`
  (scikit-image, optional), :func:`segment_labels`, :data:`SEGMENTATIONS`; weighted linear
  surrogates :func:`fit_linear_surrogate` (scikit-learn where installed, else NumPy),
  :func:`linear_regressor`, :data:`LINEAR_REGRESSORS`.
* **Concepts**: :func:`fit_nmf` (scikit-learn's non-negative factorisation, returning a
  :class:`Factorization`).
* **Tensor operations EagerPy lacks**, identical in every framework: :func:`resize`,
  :func:`gaussian_blur`, :func:`box_blur`, :func:`spatial_filter`, :func:`interpolation_matrix`,
  :func:`matmul`, :func:`on_device`, :func:`expand_to_inputs`, :func:`reduce_channels`,
  :func:`normalize_per_item`, :func:`activate`, :func:`channels_first`, :func:`input_size`.
* **Validators** (raise :class:`~xai_toolbox.errors.ParameterError` naming the parameter):
  :func:`positive_int`, :func:`non_negative_int`, :func:`flag`, :func:`number`,
  :func:`in_range`, :func:`one_of`, :func:`power_of_two`, :func:`seed`, :func:`activation`,
  :func:`layer_name`, :func:`explanation_shape`, :func:`has_non_finite`.
* **Workload** (refuse a call the machine cannot run, before any pass): :func:`check_workload`
  (raises :class:`~xai_toolbox.errors.WorkloadError` with the numbers), :func:`available_memory`.
* **Adapters** (a new framework): :class:`ModelAdapter` (the contract), :class:`Framework`,
  :func:`rows` / :func:`current_rows` (out-of-memory row windows), :func:`memory_scope`,
  :func:`to_numpy`, :func:`float32_array`, :func:`as_type_of`, :func:`pick_default_layer`,
  :func:`token_grid` / :func:`token_layers` / :func:`last_informative` (transformers' token
  layers and their default CAM layer), :func:`select_output` / :func:`describe_output`
  (structured model outputs, ``output=``), :func:`resolve_qualified`, :func:`adapt`, :func:`frameworks`, :func:`framework_info`,
  :func:`canonical_framework`, and :data:`hookimpl` to mark hook functions; for adapters that
  compile built passes (:meth:`ModelAdapter.forward_built_pass`): :func:`run_built`,
  :func:`split_built`, :func:`finish_built` and :func:`tracing`.

Stability: :data:`API_VERSION` is ``MAJOR.MINOR``. Within a major version, names in
``__all__`` keep working with the signatures and behaviour documented here; new names and new
optional parameters bump the minor version. An incompatible change bumps the major version and
comes after at least one minor release in which the old form still works and gives a
``DeprecationWarning``. Everything not in ``__all__`` (any underscore name, any module other
than this one and :mod:`xai_toolbox`) may change in any release. A plugin states what it needs
with :func:`require_api`.

Example:
    >>> import eagerpy as ep
    >>> import xai_toolbox as xt
    >>> from xai_toolbox import extend as xe
    >>> class VarGrad(xt.AttributionMethod):
    ...     name = "vargrad"
    ...     needs_gradients = True
    ...     def __init__(self, model, *, nb_samples=50, noise=0.15, seed=0, **kwargs):
    ...         super().__init__(model, **kwargs)
    ...         self.nb_samples = xe.positive_int("nb_samples", nb_samples)
    ...         self.noise, self.seed = xe.number("noise", noise), seed
    ...     def explain_batch(self, x, targets):
    ...         ...                                    # see docs/plugin-guide.md
"""

from __future__ import annotations

from ._adaptive import (
    AUTO,
    SampleChunk,
    SampleRound,
    SampleSchedule,
    checkpoints,
    correlation_standard_error,
    relative_error,
    sample_count,
    sample_counts,
    sample_schedule,
)
from ._budget import available_memory, check_workload
from ._cam import CAMMethod, LayerCapture, input_size
from ._concepts import ConceptMethod, Concepts, Factorization, fit_nmf
from ._featurevis import FeatureVisualization, Objective, Visualization
from ._noise import DeviceNoise, HostNoise, noise_source
from ._perturbation import (
    PERTURBATIONS,
    BlockSampler,
    PerturbationMethod,
    cell_geometry,
    check_grid,
    image_size,
    perturb,
    perturbation_params,
    reference_images,
    upsample_cells,
    upsample_nearest,
)
from ._segments import (
    SEGMENTATIONS,
    SegmentMethod,
    Segments,
    grid_labels,
    segment_labels,
    superpixel_labels,
)
from ._streaming import (
    Chunk,
    ItemSums,
    PairScores,
    batched_forward,
    batched_scores,
    built_scores,
    chunks,
    index_column,
    progress,
    stream_scores,
)
from ._surrogate import LINEAR_REGRESSORS, fit_linear_surrogate, linear_regressor
from ._targets import ScoreFn, Targets
from ._validation import (
    activation,
    explanation_shape,
    flag,
    has_non_finite,
    in_range,
    layer_name,
    non_negative_int,
    number,
    one_of,
    positive_int,
    power_of_two,
    seed,
)
from .backends import adapt, canonical_framework, framework_info, frameworks
from .backends.adapter import (
    Draw,
    ModelAdapter,
    ScoreOf,
    as_type_of,
    current_rows,
    describe_output,
    finish_built,
    float32_array,
    item_seed,
    last_informative,
    memory_scope,
    pick_default_layer,
    resolve_qualified,
    rows,
    run_built,
    select_output,
    split_built,
    standard_normal,
    to_numpy,
    token_grid,
    token_layers,
    tracing,
    weighted_score,
)
from .backends.frameworks import Framework
from .base import AttributionMethod, Explanation, MethodMetric, Metric, MetricResult
from .errors import PluginError
from .ops import (
    ACTIVATIONS,
    activate,
    box_blur,
    channels_first,
    expand_to_inputs,
    gaussian_blur,
    interpolation_matrix,
    matmul,
    normalize_per_item,
    on_device,
    reduce_channels,
    resize,
    spatial_filter,
)
from .registry import hookimpl

#: Version of the extension API, ``MAJOR.MINOR`` (see the module docs for the promise).
#: 1.3 added :meth:`ModelAdapter.forward_built` / :meth:`ModelAdapter.forward_built_pass`,
#: :func:`built_scores`, ``stream_scores(tensors=...)``, :func:`run_built`,
#: :func:`split_built`, :func:`finish_built` and :func:`tracing`.
API_VERSION = "1.3"


def require_api(version: str) -> None:
    """Fail with a clear :class:`~xai_toolbox.errors.PluginError` unless this toolbox offers
    extension API ``version`` (``"MAJOR.MINOR"``): the same major version, at least that minor.

    Call it at the top of a plugin module, so an incompatible toolbox is reported by name
    instead of failing later with an ``AttributeError``.

    Example:
        >>> require_api("1.0")
    """
    try:
        major, minor = (int(part) for part in str(version).split("."))
    except ValueError:
        raise PluginError(f"require_api takes 'MAJOR.MINOR', got {version!r}") from None
    have_major, have_minor = (int(part) for part in API_VERSION.split("."))
    if major != have_major or minor > have_minor:
        raise PluginError(
            f"this plugin needs the xai-toolbox extension API {version}; the installed toolbox "
            f"offers {API_VERSION} (same major version, at least that minor, is needed)"
        )


__all__ = [
    "ACTIVATIONS",
    "API_VERSION",
    "AUTO",
    "LINEAR_REGRESSORS",
    "PERTURBATIONS",
    "SEGMENTATIONS",
    "AttributionMethod",
    "BlockSampler",
    "CAMMethod",
    "Chunk",
    "ConceptMethod",
    "Concepts",
    "DeviceNoise",
    "Draw",
    "Explanation",
    "Factorization",
    "FeatureVisualization",
    "Framework",
    "HostNoise",
    "ItemSums",
    "LayerCapture",
    "MethodMetric",
    "Metric",
    "MetricResult",
    "ModelAdapter",
    "Objective",
    "PairScores",
    "PerturbationMethod",
    "SampleChunk",
    "SampleRound",
    "SampleSchedule",
    "ScoreFn",
    "ScoreOf",
    "SegmentMethod",
    "Segments",
    "Targets",
    "Visualization",
    "activate",
    "activation",
    "adapt",
    "as_type_of",
    "available_memory",
    "batched_forward",
    "batched_scores",
    "box_blur",
    "built_scores",
    "canonical_framework",
    "cell_geometry",
    "channels_first",
    "check_grid",
    "check_workload",
    "checkpoints",
    "chunks",
    "correlation_standard_error",
    "current_rows",
    "describe_output",
    "expand_to_inputs",
    "fit_linear_surrogate",
    "explanation_shape",
    "finish_built",
    "fit_nmf",
    "flag",
    "float32_array",
    "framework_info",
    "frameworks",
    "gaussian_blur",
    "grid_labels",
    "has_non_finite",
    "hookimpl",
    "image_size",
    "in_range",
    "index_column",
    "input_size",
    "interpolation_matrix",
    "item_seed",
    "last_informative",
    "layer_name",
    "linear_regressor",
    "matmul",
    "memory_scope",
    "noise_source",
    "non_negative_int",
    "normalize_per_item",
    "number",
    "on_device",
    "one_of",
    "perturb",
    "perturbation_params",
    "pick_default_layer",
    "positive_int",
    "power_of_two",
    "progress",
    "reduce_channels",
    "reference_images",
    "relative_error",
    "require_api",
    "resize",
    "resolve_qualified",
    "rows",
    "run_built",
    "sample_count",
    "sample_counts",
    "sample_schedule",
    "seed",
    "select_output",
    "segment_labels",
    "spatial_filter",
    "split_built",
    "standard_normal",
    "superpixel_labels",
    "stream_scores",
    "to_numpy",
    "token_grid",
    "token_layers",
    "tracing",
    "upsample_cells",
    "upsample_nearest",
    "weighted_score",
]
