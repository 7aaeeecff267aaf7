"""The main job: explain held-out images of the embedded demo model with every method, score them.

``xai-toolbox demo`` runs :func:`run_demo`: it draws fresh images from the synthetic shapes
data set (:func:`xai_toolbox.demo.make_shapes`, with a seed outside the training range),
explains the true class of each with every registered method at the settings in
:data:`DEMO_PARAMS`, scores the explanations with every registered metric — the pointing
games against the ground-truth object masks included — prints a ranked table and writes a
self-contained HTML report.

:func:`evaluate_methods` is the loop underneath (also used by ``xai-toolbox evaluate``): one
method at a time, explain, then score with each metric, timing each step, with progress bars.

Example:
    >>> from xai_toolbox.demo_job import run_demo
    >>> result = run_demo("torch", n_images=4, quick=True, out="xai-demo")
    >>> result.report
    PosixPath('xai-demo/report.html')
    >>> print(result.summary)
"""

from __future__ import annotations

import copy
import inspect
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import MetricResult
from .errors import ParameterError

__all__ = [
    "DEFAULT_EXCLUDED_METRICS",
    "DEMO_BATCH_SIZE",
    "DEMO_PARAMS",
    "QUICK_PARAMS",
    "DemoResult",
    "EvaluationRun",
    "demo_settings",
    "evaluate_methods",
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
#: 64x64 images. The default run (8 images, every method and metric) takes about 40 s on 2 idle
#: CPU cores with PyTorch, 30 s with TensorFlow. Methods and metrics not listed (a third-party plugin) run with
#: their own defaults.
DEMO_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "methods": {
        "saliency": {},
        "gradient_input": {},
        "integrated_gradients": {},
        "smoothgrad": {"seed": 0},
        "gradcam": {},
        "gradcampp": {},
        "opticam": {},
        "rise": {"seed": 0},
        "sobol": {},
        "hsic": {"seed": 0},
        "occlusion": {"patch_size": 8, "stride": 4},
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
        "randomization": {},
    },
}

#: Overrides for ``--quick``: a run of a few seconds per framework. Merged into
#: :data:`DEMO_PARAMS` name by name (parameters not listed here keep their demo value).
QUICK_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "methods": {
        "integrated_gradients": {"steps": 8},
        "smoothgrad": {"nb_samples": 8, "seed": 0},
        "opticam": {"max_iter": 10},
        "rise": {"nb_samples": 200, "grid_size": 7, "seed": 0},
        "sobol": {"nb_design": 8, "grid_size": 6},
        "hsic": {"nb_design": 100, "grid_size": 6, "seed": 0},
        "occlusion": {"patch_size": 16, "stride": 8},
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
DEFAULT_EXCLUDED_METRICS: tuple[str, ...] = ("randomization",)

Echo = Callable[[str], None]


# -- the evaluation loop -----------------------------------------------------------------------
@dataclass
class EvaluationRun:
    """What :func:`evaluate_methods` produced.

    Attributes:
        maps: ``{method: explanations (N, H, W)}`` as NumPy arrays.
        results: ``{method: {metric: MetricResult}}``.
        timings: seconds spent explaining, per method.
        metric_timings: seconds spent scoring, per ``(method, metric)``.
        params: the parameters each method and metric was built with.
        failures: ``{"method" or "method/metric": message}`` for steps that raised.
    """

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    results: dict[str, dict[str, MetricResult]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    metric_timings: dict[tuple[str, str], float] = field(default_factory=dict)
    params: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {"methods": {}, "metrics": {}}
    )
    failures: dict[str, str] = field(default_factory=dict)


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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_numpy(t: Any) -> np.ndarray:
    from .plot import to_numpy

    return to_numpy(t)


def _score(metric: Any, method: Any, x: Any, targets: Any, maps: Any, masks: Any) -> MetricResult:
    mask_arg = masks if metric.needs_masks else None
    if metric.needs_explanations:
        return metric(x, targets, maps, mask_arg)
    # A check that re-runs the method itself (model randomisation) gets the method object, and
    # the maps already computed where it can reuse them.
    accepts = inspect.signature(metric.evaluate).parameters
    extra = {"explanations": maps} if "explanations" in accepts else {}
    return metric.evaluate(method, x, targets, mask_arg, **extra)


def evaluate_methods(
    model: Any,
    inputs: Any,
    targets: Any,
    *,
    methods: Sequence[str],
    metrics: Sequence[str] = (),
    masks: Any = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    echo: Echo | None = None,
    keep_going: bool = True,
) -> EvaluationRun:
    """Explain ``inputs`` with each method, then score each explanation with each metric.

    Methods run one at a time (a progress bar names the current step), each followed by all
    metrics on its maps, so only one method's explanations are held on the device.

    Args:
        model: the model (PyTorch, Keras or a NumPy callable).
        inputs: the batch, in the model's layout.
        targets: class indices ``(N,)``, an int, or ``None`` for the top-1 class.
        methods, metrics: registered names.
        masks: ground-truth masks ``(N, H, W)`` for metrics that need them.
        method_params, metric_params: ``{name: {param: value}}``.
        batch_size: passed to every method and metric without an explicit ``batch_size``.
        progress: progress bars (``None``: only on an interactive terminal).
        echo: called with one line per finished step (e.g. ``print``).
        keep_going: record a failing method/metric in ``failures`` and go on (else raise).

    Example:
        >>> run = evaluate_methods(model, x, labels, methods=["gradcam"], metrics=["deletion"])
        >>> run.results["gradcam"]["deletion"].mean
    """
    from .api import method as make_method
    from .api import metric as make_metric
    from .backends import adapt

    # One adapter shared by every method and metric: a Keras model is traced once, not once
    # per object (an adapter passed as the model is used as is).
    model = adapt(model)
    run = EvaluationRun()
    method_params = method_params or {}
    metric_params = metric_params or {}
    show = _progress_enabled(progress)
    bar = _bar(len(methods) * (1 + len(metrics)), show)

    def say(line: str) -> None:
        if echo is None:
            return
        if bar is not None:
            bar.write(line)
        else:
            echo(line)

    try:
        for name in methods:
            params = dict(method_params.get(name, {}))
            if batch_size:
                params = {"batch_size": batch_size, **params}
            run.params["methods"][name] = params
            if bar is not None:
                bar.set_description(f"{name}: explaining")
            start = time.perf_counter()
            try:
                method = make_method(name, model, **{"progress": show, **params})
                native_maps = method(inputs, targets)
            except Exception as exc:
                if not keep_going:
                    raise
                run.failures[name] = _describe(exc)
                say(f"  {name:<22} FAILED: {run.failures[name]}")
                if bar is not None:
                    bar.update(1 + len(metrics))
                continue
            run.timings[name] = time.perf_counter() - start
            run.maps[name] = _to_numpy(native_maps).astype(np.float32)
            if bar is not None:
                bar.update(1)
            run.results[name] = {}
            for metric_name in metrics:
                mparams = dict(metric_params.get(metric_name, {}))
                if batch_size:
                    mparams = {"batch_size": batch_size, **mparams}
                run.params["metrics"][metric_name] = mparams
                if bar is not None:
                    bar.set_description(f"{name}: {metric_name}")
                start_metric = time.perf_counter()
                try:
                    metric = make_metric(metric_name, model, **{"progress": show, **mparams})
                    result = _score(metric, method, inputs, targets, native_maps, masks)
                except Exception as exc:
                    if not keep_going:
                        raise
                    run.failures[f"{name}/{metric_name}"] = _describe(exc)
                    say(f"  {name}/{metric_name} FAILED: {_describe(exc)}")
                else:
                    run.results[name][metric_name] = result
                run.metric_timings[(name, metric_name)] = time.perf_counter() - start_metric
                if bar is not None:
                    bar.update(1)
            scoring = sum(t for (m, _), t in run.metric_timings.items() if m == name)
            say(f"  {name:<22} explained in {run.timings[name]:6.2f} s, scored in {scoring:6.2f} s")
    finally:
        if bar is not None:
            bar.close()
    return run


def _progress_enabled(progress: bool | None) -> bool:
    if progress is None:
        import os

        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(progress)


def _bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="xai-toolbox", unit="step", file=sys.stderr, leave=False)


# -- the demo ----------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """What :func:`run_demo` produced: the run, the report's path and the summary table."""

    run: EvaluationRun
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
) -> DemoResult:
    """Explain and score held-out images of the demo model; write ``out/report.html``.

    Args:
        framework: ``"torch"`` or ``"tf"`` — which twin of the demo model to explain.
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

    Example:
        >>> result = run_demo("tf", methods=["gradcam", "rise"], n_images=4)
        >>> result.run.results["gradcam"]["pointing_game"].mean
    """
    from .demo.data import make_shapes
    from .demo.model import DEMO_IMAGE_SIZE, DEMO_SEEDS, load_demo_model
    from .io import to_model_layout
    from .report import collect_scores, format_summary, write_report

    framework = {"pytorch": "torch", "tensorflow": "tf", "keras": "tf"}.get(framework, framework)
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
    method_names = _demo_order("methods", resolve_names("method", methods), methods is None)
    metric_names = _demo_order(
        "metrics", resolve_names("metric", metrics, exclude=DEFAULT_EXCLUDED_METRICS), metrics is None
    )
    if not method_names:
        raise ParameterError("no attribution method is registered (see `xai-toolbox list`)")
    settings_used = demo_settings(quick)
    for kind in ("methods", "metrics"):
        for name, values in (params or {}).get(kind, {}).items():
            settings_used[kind][name] = dict(values)
    echo_fn = echo or (lambda _line: None)

    started = time.perf_counter()
    data = make_shapes(int(n_images), seed=seed, size=DEMO_IMAGE_SIZE)
    model = load_demo_model(framework)
    inputs = to_model_layout(data.images, framework)
    predictions = _predict(model, inputs, framework)
    masks = data.masks.astype(np.float32)
    accuracy = float(np.mean(predictions == data.labels))
    echo_fn(
        f"xai-toolbox demo: {len(data)} held-out shapes images (seed {seed}), {framework} model "
        f"(accuracy on them {accuracy:.0%}), {len(method_names)} methods, {len(metric_names)} metrics"
    )
    run = evaluate_methods(
        model,
        inputs,
        data.labels,
        methods=method_names,
        metrics=metric_names,
        masks=masks,
        method_params=settings_used["methods"],
        metric_params=settings_used["metrics"],
        batch_size=DEMO_BATCH_SIZE,
        progress=progress,
        echo=echo,
        keep_going=keep_going,
    )
    seconds = time.perf_counter() - started
    settings: dict[str, Any] = {
        "framework": framework,
        "model": f"embedded demo CNN ({'PyTorch' if framework == 'torch' else 'Keras'}), "
        f"{len(data.class_names)} classes",
        "images": f"{len(data)} held-out images from make_shapes(seed={seed}, size={DEMO_IMAGE_SIZE})",
        "explained class": "the true label of each image",
        "model accuracy on these images": f"{accuracy:.1%}",
        "batch_size": DEMO_BATCH_SIZE,
        "quick": quick,
        # DEMO_PARAMS as used (batch_size is shown once above).
        "methods": {name: _without_batch(settings_used["methods"].get(name, {})) for name in method_names},
        "metrics": {name: _without_batch(settings_used["metrics"].get(name, {})) for name in metric_names},
        "total time": f"{seconds:.1f} s",
    }
    notes = [
        "Pointing games are scored against the ground-truth object masks of the synthetic images.",
    ]
    excluded = [m for m in DEFAULT_EXCLUDED_METRICS if metrics is None and m in resolve_names("metric", None)]
    if excluded:
        notes.append(
            f"Left out by default because they are slow: {', '.join(excluded)} "
            "(add them with --metrics)."
        )
    if run.failures:
        notes.extend(f"FAILED {what}: {why}" for what, why in run.failures.items())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = write_report(
        out / "report.html",
        images=data.images,
        maps=run.maps,
        results=run.results,
        names=[f"heldout-{seed}-{i}" for i in range(len(data))],
        labels=data.labels,
        predictions=predictions,
        class_names=data.class_names,
        settings=settings,
        timings=run.timings,
        notes=notes,
        title=f"xai-toolbox demo — {framework}",
        channels_first=False,
    )
    scores = collect_scores(run.results)
    summary = format_summary(scores, run.timings) if scores else "(no scores)"
    echo_fn("")
    echo_fn(summary)
    echo_fn("")
    echo_fn(f"report: {report}  ({seconds:.1f} s)")
    return DemoResult(run, report, summary, settings, data.labels, predictions, seconds)


def _without_batch(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "batch_size"}


def _demo_order(kind: str, names: list[str], default: bool) -> list[str]:
    """Registered names in the order of :data:`DEMO_PARAMS` (families together), others after."""
    if not default:
        return names  # the user's order
    known = list(DEMO_PARAMS[kind])
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def _predict(model: Any, inputs: np.ndarray, framework: str) -> np.ndarray:
    """The demo model's top-1 classes for ``inputs`` (NumPy, in the model's layout)."""
    from .backends import adapt

    adapter = adapt(model, framework)
    with adapter.preserved():
        outputs = adapter.forward(adapter.to_model(inputs))
    return outputs.numpy().argmax(axis=1).astype(np.int64)
