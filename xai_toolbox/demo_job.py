"""The main job: explain held-out images of the embedded demo model with every method, score them.

``xai-toolbox demo`` runs :func:`run_demo`: it draws fresh images from the synthetic shapes
data set (:func:`xai_toolbox.demo.make_shapes`, with a seed outside the training range),
explains the true class of each with every registered method at the settings in
:data:`DEMO_PARAMS`, scores the explanations with every registered metric — the pointing
games against the ground-truth object masks included — prints a ranked table and writes a
self-contained HTML report.

The loop underneath is :func:`xai_toolbox.evaluate` (``xt.evaluate``, also behind
``xai-toolbox explain`` and ``evaluate``): one method at a time, explain, then score with each
metric, timing each step, with a progress bar.

Example:
    >>> from xai_toolbox.demo_job import run_demo
    >>> result = run_demo("torch", n_images=4, quick=True, out="xai-demo")
    >>> result.report
    PosixPath('xai-demo/report.html')
    >>> print(result.summary)
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ParameterError

if TYPE_CHECKING:
    from .evaluation import EvaluationTable

__all__ = [
    "DEFAULT_EXCLUDED_METRICS",
    "DEMO_BATCH_SIZE",
    "DEMO_PARAMS",
    "QUICK_PARAMS",
    "DemoResult",
    "demo_settings",
    "resolve_names",
    "run_demo",
]

#: Model inputs per forward pass for every method and metric of the demo. Measured on 2 CPU
#: cores: PyTorch runs this model ~3x faster per image in batches of 32 than of 64-256 (the
#: larger activations no longer fit the caches and are re-allocated, page by page, on every
#: pass); Keras is indifferent.
DEMO_BATCH_SIZE = 32

#: Hyper-parameters of the demo, per method and per metric: each method's published setting
#: (its default), with a seed where it draws random numbers and Occlusion's window scaled to the
#: 64x64 images. The default run (8 images, every method, every metric but
#: :data:`DEFAULT_EXCLUDED_METRICS`) takes about 55 s on 2 idle CPU cores with PyTorch and with
#: TensorFlow (the surrogate-model methods about 20 s of it). Methods and metrics not listed (a
#: third-party plugin) run with their own defaults.
DEMO_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "methods": {
        "saliency": {},
        "gradient_input": {},
        "integrated_gradients": {},
        "smoothgrad": {"seed": 0},
        "squaregrad": {"seed": 0},
        "vargrad": {"seed": 0},
        # 50 draws instead of the default 200 (SHAP's): the default would take 4x SmoothGrad.
        "gradient_shap": {"nb_samples": 50, "seed": 0},
        "guided_backprop": {},
        "deconvnet": {},
        "forgrad": {},
        "gradcam": {},
        "gradcampp": {},
        "layercam": {},
        "xgradcam": {},
        "hirescam": {},
        "scorecam": {},
        "ablationcam": {},
        "eigencam": {},
        "fem": {},
        "opticam": {},
        "rise": {"seed": 0},
        "sobol": {},
        "hsic": {"seed": 0},
        "occlusion": {"patch_size": 8, "stride": 4},
        "lime": {"seed": 0},
        "kernel_shap": {"seed": 0},
        "shapley_value_sampling": {"seed": 0},
        "feature_ablation": {},
    },
    "metrics": {
        # The RISE paper's protocol: class probabilities, black substrate for deletion, a
        # blurred copy of the image for insertion.
        "deletion": {"steps": 20, "activation": "softmax"},
        "insertion": {"steps": 20, "activation": "softmax", "baseline": "blur"},
        "mufidelity": {"nb_samples": 128, "seed": 0},
        "average_drop": {},
        "average_increase": {},
        "average_gain": {},
        # The paper's 15 px at 224 px (6.7 % of the side) scaled to the 64 px demo images.
        "pointing_game": {"tolerance": 4},
        "energy_pointing_game": {},
        "relevance_mass_accuracy": {},
        "relevance_rank_accuracy": {},
        "infidelity": {"seed": 0},
        "complexity": {},
        "sparseness": {},
        "randomization": {},
        # Opt-in (DEFAULT_EXCLUDED_METRICS): each re-explains or imputes every image many times.
        "road_morf": {"percentiles": [0.2, 0.5, 0.8], "seed": 0},
        "road_lerf": {"percentiles": [0.2, 0.5, 0.8], "seed": 0},
        "average_stability": {"seed": 0},
        "sensitivity_max": {"seed": 0},
        "local_lipschitz": {"nb_samples": 20, "std": 0.05, "seed": 0},
        "random_logit": {},
    },
}

#: Overrides for ``--quick``: a run of a few seconds per framework. Merged into
#: :data:`DEMO_PARAMS` name by name (parameters not listed here keep their demo value).
QUICK_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "methods": {
        "integrated_gradients": {"steps": 8},
        "smoothgrad": {"nb_samples": 8, "seed": 0},
        "squaregrad": {"nb_samples": 8, "seed": 0},
        "vargrad": {"nb_samples": 8, "seed": 0},
        "gradient_shap": {"nb_samples": 8, "seed": 0},
        "opticam": {"max_iter": 10},
        "rise": {"nb_samples": 200, "grid_size": 7, "seed": 0},
        "sobol": {"nb_design": 8, "grid_size": 6},
        "hsic": {"nb_design": 100, "grid_size": 6, "seed": 0},
        "occlusion": {"patch_size": 16, "stride": 8},
        "lime": {"nb_samples": 100, "grid_size": 4, "seed": 0},
        "kernel_shap": {"nb_samples": 100, "grid_size": 4, "seed": 0},
        "shapley_value_sampling": {"nb_samples": 4, "grid_size": 4, "seed": 0},
        "feature_ablation": {"grid_size": 4},
    },
    "metrics": {
        "deletion": {"steps": 8},
        "insertion": {"steps": 8},
        "mufidelity": {"nb_samples": 32, "seed": 0},
    },
}

#: Metrics left out of the default demo run (ask for them with ``--metrics``). The model
#: randomisation check re-explains every image with every method on a copy of the model
#: whose top layers are re-initialised: it doubles the time spent explaining.
#: The stability metrics re-explain every image 10-200 times, ROAD imputes it (a sparse solve)
#: at every percentile, and MeGe needs models trained on folds of the data.
DEFAULT_EXCLUDED_METRICS: tuple[str, ...] = (
    "randomization", "random_logit", "average_stability", "sensitivity_max", "local_lipschitz",
    "road_morf", "road_lerf", "mege",
)

Echo = Callable[[str], None]


def resolve_names(kind: str, requested: Sequence[str] | None, exclude: Sequence[str] = ()) -> list[str]:
    """Validate method or metric names against the registry (``None``: all registered).

    Raises:
        UnknownNameError: a name no plugin registered (the message lists the available ones).

    Example:
        >>> resolve_names("method", ["gradcam", "rise"])
        ['gradcam', 'rise']
    """
    from .registry import get_registry

    registry = get_registry()
    table = registry.methods if kind == "method" else registry.metrics
    lookup = registry.method if kind == "method" else registry.metric
    if requested is None:
        return [name for name in sorted(table) if name not in exclude]
    names = list(dict.fromkeys(requested))
    for name in names:
        lookup(name)  # raises UnknownNameError with the list of available names
    return names


# -- the demo ----------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """What :func:`run_demo` produced: the evaluation (an
    :class:`~xai_toolbox.evaluation.EvaluationTable` with the maps, timings and failures), the
    report's path and the summary table."""

    run: EvaluationTable
    report: Path
    summary: str
    settings: dict[str, Any]
    labels: np.ndarray
    predictions: np.ndarray
    seconds: float


def demo_settings(quick: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """The demo's per-method and per-metric parameters (``quick``: with :data:`QUICK_PARAMS`).

    Example:
        >>> demo_settings()["methods"]["rise"]
        {'nb_samples': 1000, 'grid_size': 7, 'seed': 0}
    """
    settings = copy.deepcopy(DEMO_PARAMS)
    if quick:
        for kind in ("methods", "metrics"):
            for name, values in QUICK_PARAMS[kind].items():
                settings[kind].setdefault(name, {}).update(values)
    return settings


def _training_seeds() -> range:
    from .demo.model import DEMO_SEEDS

    return range(DEMO_SEEDS.train, DEMO_SEEDS.train + 1000)


def run_demo(
    framework: str = "torch",
    *,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    n_images: int = 8,
    out: str | Path = "xai-demo",
    seed: int | None = None,
    quick: bool = False,
    params: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    progress: bool | None = None,
    echo: Echo | None = print,
    keep_going: bool = True,
    wide: bool = False,
) -> DemoResult:
    """Explain and score held-out images of the demo model; write ``out/report.html``.

    The explaining and scoring is :func:`xai_toolbox.evaluate` (``xt.evaluate``).

    Args:
        framework: ``"torch"`` or ``"tf"`` (or an alias: ``"pytorch"``, ``"keras"``) — which
            twin of the demo model to explain.
        methods: method names (default: every registered method).
        metrics: metric names (default: every registered metric except
            :data:`DEFAULT_EXCLUDED_METRICS`).
        n_images: number of held-out images.
        out: output folder (created).
        seed: seed of the held-out images (default: ``DEMO_SEEDS.heldout``); seeds of the
            training range are refused.
        quick: smaller settings (:data:`QUICK_PARAMS`), for a smoke test.
        params: ``{"methods": {name: {...}}, "metrics": {name: {...}}}`` replacing the
            demo's parameters of the methods and metrics named.
        progress: progress bars (``None``: on an interactive terminal).
        echo: where to print progress lines and the summary (``None``: silent).
        keep_going: a failing method or metric is reported, not raised.
        wide: print the summary table in one piece (default: cut to the terminal width).

    Example:
        >>> result = run_demo("tf", methods=["gradcam", "rise"], n_images=4)
        >>> result.run.results["gradcam"]["pointing_game"].mean
    """
    from .evaluation import evaluate, top1

    framework, seed = _check_demo_arguments(framework, n_images, seed)
    method_names, metric_names = _demo_selection(methods, metrics)
    settings_used = _settings_used(quick, params)
    say = echo or (lambda _line: None)

    started = time.perf_counter()
    data, model, inputs = _heldout_batch(framework, n_images, seed)
    predictions = top1(model, inputs, batch_size=DEMO_BATCH_SIZE).classes
    accuracy = float(np.mean(predictions == data.labels))
    say(
        f"xai-toolbox demo: {len(data)} held-out shapes images (seed {seed}), {framework} model "
        f"(accuracy on them {accuracy:.0%}), {len(method_names)} methods, {len(metric_names)} metrics"
    )
    table = evaluate(
        model,
        inputs,
        data.labels,
        methods=method_names,
        metrics=metric_names,
        masks=data.masks.astype(np.float32),  # the pointing games' ground truth
        method_params={name: settings_used["methods"].get(name, {}) for name in method_names},
        metric_params={name: settings_used["metrics"].get(name, {}) for name in metric_names},
        batch_size=DEMO_BATCH_SIZE,
        progress=progress,
        echo=echo,
        keep_going=keep_going,
    )
    seconds = time.perf_counter() - started
    settings = _report_settings(framework, data, seed, accuracy, quick, table, seconds)
    notes = _report_notes(table, default_metrics=metrics is None)
    report = _write_demo_report(Path(out), data, seed, predictions, table, settings, notes, framework)
    summary = _summary(table, wide)
    for line in ("", summary, "", f"report: {report}  ({seconds:.1f} s)"):
        say(line)
    return DemoResult(table, report, summary, settings, data.labels, predictions, seconds)


def _check_demo_arguments(framework: str, n_images: int, seed: int | None) -> tuple[str, int]:
    """The canonical framework name and the seed of the held-out images, both checked."""
    from .backends import canonical_framework
    from .demo.model import DEMO_SEEDS

    framework = canonical_framework(framework)
    if framework not in ("torch", "tf"):
        raise ParameterError(f"framework must be 'torch' or 'tf', got {framework!r}")
    if int(n_images) < 1:
        raise ParameterError(f"n_images must be >= 1, got {n_images}")
    seed = DEMO_SEEDS.heldout if seed is None else int(seed)
    if seed in _training_seeds():
        r = _training_seeds()
        raise ParameterError(
            f"seed {seed} draws training images (seeds {r.start}-{r.stop - 1} are reserved for "
            "training); pick a seed outside that range"
        )
    return framework, seed


def _demo_selection(
    methods: Sequence[str] | None, metrics: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The method and metric names to run: the user's, or every registered one in demo order."""
    method_names = _demo_order("methods", resolve_names("method", methods), methods is None)
    metric_names = _demo_order(
        "metrics", resolve_names("metric", metrics, exclude=DEFAULT_EXCLUDED_METRICS), metrics is None
    )
    if not method_names:
        raise ParameterError("no attribution method is registered (see `xai-toolbox list`)")
    return method_names, metric_names


def _settings_used(
    quick: bool, params: Mapping[str, Mapping[str, Mapping[str, Any]]] | None
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`demo_settings`, with the user's ``params`` replacing those of the names given."""
    settings = demo_settings(quick)
    for kind in ("methods", "metrics"):
        for name, values in (params or {}).get(kind, {}).items():
            settings[kind][name] = dict(values)
    return settings


def _heldout_batch(framework: str, n_images: int, seed: int) -> tuple[Any, Any, Any]:
    """The held-out shapes data, the demo model and the images in the model's layout."""
    from .demo.data import make_shapes
    from .demo.model import DEMO_IMAGE_SIZE, load_demo_model
    from .io import to_model_layout

    data = make_shapes(int(n_images), seed=seed, size=DEMO_IMAGE_SIZE)
    return data, load_demo_model(framework), to_model_layout(data.images, framework)


def _report_settings(
    framework: str, data: Any, seed: int, accuracy: float, quick: bool, table: EvaluationTable, seconds: float
) -> dict[str, Any]:
    """What the report's settings section lists."""
    from .demo.model import DEMO_IMAGE_SIZE

    return {
        "framework": framework,
        "model": f"embedded demo CNN ({'PyTorch' if framework == 'torch' else 'Keras'}), "
        f"{len(data.class_names)} classes",
        "images": f"{len(data)} held-out images from make_shapes(seed={seed}, size={DEMO_IMAGE_SIZE})",
        "explained class": "the true label of each image",
        "model accuracy on these images": f"{accuracy:.1%}",
        "batch_size": DEMO_BATCH_SIZE,
        "quick": quick,
        # The parameters as used (batch_size is shown once above).
        "methods": {name: _without_batch(p) for name, p in table.params["methods"].items()},
        "metrics": {name: _without_batch(p) for name, p in table.params["metrics"].items()},
        "total time": f"{seconds:.1f} s",
    }


def _report_notes(table: EvaluationTable, default_metrics: bool) -> list[str]:
    notes = ["Pointing games are scored against the ground-truth object masks of the synthetic images."]
    registered = resolve_names("metric", None)
    excluded = [m for m in DEFAULT_EXCLUDED_METRICS if default_metrics and m in registered]
    if excluded:
        notes.append(
            f"Left out by default because they are slow: {', '.join(excluded)} "
            "(add them with --metrics)."
        )
    notes.extend(f"FAILED {what}: {why}" for what, why in table.failures.items())
    return notes


def _write_demo_report(
    out: Path,
    data: Any,
    seed: int,
    predictions: np.ndarray,
    table: EvaluationTable,
    settings: dict[str, Any],
    notes: list[str],
    framework: str,
) -> Path:
    from .report import reproduce_command, write_report

    out.mkdir(parents=True, exist_ok=True)
    return write_report(
        out / "report.html",
        images=data.images,
        maps=table.maps,
        results=table,
        names=[f"heldout-{seed}-{i}" for i in range(len(data))],
        labels=data.labels,
        predictions=predictions,
        class_names=data.class_names,
        settings=settings,
        timings=table.timings,
        notes=notes,
        title=f"xai-toolbox demo — {framework}",
        channels_first=False,
        targets=data.labels,  # the demo explains the true class
        command=reproduce_command() or _demo_command(framework, len(data), seed, table, settings),
    )


def _demo_command(framework: str, n_images: int, seed: int, table: EvaluationTable, settings: dict[str, Any]) -> str:
    """The ``xai-toolbox demo`` command equivalent to a run from Python (its methods and
    metrics named explicitly)."""
    import shlex

    words = ["xai-toolbox", "demo", "--framework", framework, "--n-images", str(n_images), "--seed", str(seed)]
    words += ["--quick"] if settings.get("quick") else []
    words += ["--methods", *table.maps, "--metrics", *table.metrics] if table.metrics else ["--methods", *table.maps]
    return shlex.join(words)


def _summary(table: EvaluationTable, wide: bool = False) -> str:
    from .report import collect_scores, format_summary, terminal_width

    scores = collect_scores(table)
    width = None if wide else terminal_width()
    return format_summary(scores, table.timings, width=width) if scores else "(no scores)"


def _without_batch(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "batch_size"}


def _demo_order(kind: str, names: list[str], default: bool) -> list[str]:
    """Registered names in the order of :data:`DEMO_PARAMS` (families together), others after."""
    if not default:
        return names  # the user's order
    known = list(DEMO_PARAMS[kind])
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))
