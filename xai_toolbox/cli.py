"""The ``xai-toolbox`` command line.

* ``xai-toolbox list`` — methods and metrics, and the package providing each;
* ``xai-toolbox demo`` — the main job: the embedded demo model explained by every method and
  scored by every metric, with a ranked table and ``xai-demo/report.html``;
* ``xai-toolbox explain`` — explanations of your own model on your images (``.npy`` maps and
  PNG overlays);
* ``xai-toolbox evaluate`` — the same plus metric scores and an HTML report;
* ``xai-toolbox run`` / ``report`` — whole datasets, stored and resumable, locally or on Ray
  (:mod:`xai_toolbox.datasets.cli`).

Errors print one line, ``xai-toolbox: error: ...``, and exit non-zero; ``--debug`` shows the
traceback instead. Exit status 2: the command was refused before anything ran — every option,
file and the output folder are checked before a model is loaded (:mod:`xai_toolbox._cli_checks`);
1: a step failed while running; 130: interrupted (the maps already computed are written, each
method's as soon as it completes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import _cli_checks as checks
from ._cli_checks import UsageError
from .backends.native_logs import native_logs_filtered
from .registry import get_registry

PROG = "xai-toolbox"

DEFAULT_EXPLAIN_METHODS = ("saliency",)


class CliError(Exception):
    """A usage problem found by the command line itself (shown as one line)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# -- list ---------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    """Every kind of plugin and the package providing it: methods (family, gradients, layer,
    passes per image at the defaults, input kinds), metrics by family (with their direction),
    concept methods and feature visualisations, frameworks (installed or not), the adapter
    plugins, and plugins not loaded (and why)."""
    registry = get_registry()
    print("methods:")
    _print_rows(
        ["name", "class", "family", "gradients", "layer", "seeded", "passes/image", "inputs", "package (plugin)"],
        [_method_row(e) for _, e in sorted(registry.methods.items())],
    )
    print("metrics:")
    rows = [_metric_row(e) for _, e in sorted(registry.metrics.items(), key=lambda kv: (kv[1].cls.family, kv[0]))]
    _print_rows(["name", "class", "family", "better", "package (plugin)"], rows)
    # Concept and feature-visualisation methods carry the same metadata as attribution methods
    # (passes: per image of the class / per visualisation).
    for title, table in (("concept methods:", registry.concepts), ("feature visualisations:", registry.featurevis)):
        print(title)
        _print_rows(
            ["name", "class", "family", "gradients", "layer", "seeded", "passes", "inputs", "package (plugin)"],
            [_method_row(e) for _, e in sorted(table.items())],
        )
    print("frameworks:")
    _print_rows(
        ["name", "framework", "installed", "package (plugin)"],
        [
            [n, e.obj.display_name, "yes" if e.obj.available() else "no", f"{e.package} ({e.plugin})"]
            for n, e in sorted(registry.frameworks.items())
        ],
    )
    print("adapter plugins (asked in this order):")
    _print_rows(["plugin", "package"], [list(pair) for pair in registry.adapter_plugins()])
    for title, problems in (("failed to load", registry.failed), ("disabled", registry.disabled)):
        if problems:
            print(f"plugins {title}:")
            for name, why in sorted(problems.items()):
                print(f"  {name}: {why}")
    return 0


def _method_row(entry: Any) -> list[str]:
    cls = entry.cls
    try:
        passes = cls(None).passes_per_image()  # constructors store parameters only
    except Exception:  # a plugin whose defaults cannot be built without a model
        passes = None
    return [
        entry.name, cls.__name__, cls.family, "yes" if cls.needs_gradients else "no",
        "yes" if cls.needs_layers else "no", "yes" if cls.stochastic else "no",
        "input-dependent" if passes is None else str(passes),
        ", ".join(cls.input_kinds), f"{entry.package} ({entry.plugin})",
    ]


def _metric_row(entry: Any) -> list[str]:
    cls = entry.cls
    better = "higher" if cls.higher_is_better else "lower"
    return [entry.name, cls.__name__, cls.family, better, f"{entry.package} ({entry.plugin})"]


def _print_rows(header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        print("  (none)")
        return
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- demo ---------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo_job import run_demo

    result = run_demo(
        args.framework,
        methods=args.methods,
        metrics=args.metrics,
        n_images=args.n_images,
        out=args.out,
        seed=args.seed,
        quick=args.quick,
        progress=False if args.no_progress else None,
        echo=print,
        keep_going=not args.debug,
        wide=args.wide,
    )
    return _report_failures(result.run.failures)


def _report_failures(failures: dict[str, str]) -> int:
    for what, why in failures.items():
        print(f"{PROG}: error: {what} failed: {why}", file=sys.stderr)
    return 1 if failures else 0


# -- explain / evaluate ---------------------------------------------------------------------------
def _parse_params(items: Sequence[str] | None, allowed: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["rise.nb_samples=500", "gradcam.layer=conv3"]`` -> ``{"rise": {"nb_samples": 500}, ...}``."""
    params: dict[str, dict[str, Any]] = {}
    for item in items or ():
        match = re.fullmatch(r"([A-Za-z0-9_]+)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)", item)
        if match is None:
            raise CliError(f"--param {item!r} must look like NAME.KEY=VALUE, e.g. rise.nb_samples=500")
        name, key, raw = match.groups()
        if name not in allowed:
            raise CliError(
                f"--param {item!r} is for {name!r}, which is not among the selected methods/metrics "
                f"({', '.join(allowed)})"
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word: a layer name, a mode...
        params.setdefault(name, {})[key] = value
    return params


def _parse_target(text: str) -> int | None:
    if text.lower() in ("top1", "top-1", "pred", "predicted"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"--target must be 'top1' or a class index, got {text!r}") from None
    if value < 0:
        raise CliError(f"--target must be a non-negative class index, got {value}")
    return value


def _read_class_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise CliError(f"class names file not found: {path!r}")
    try:
        names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read class names file {path!r}: {exc}") from exc
    return names


def _load_masks(paths: Sequence[str], image_paths: Sequence[Path], size: tuple[int, int]) -> Any:
    """Binary masks ``(N, H, W)`` matched to the images by file stem."""
    import numpy as np
    from PIL import Image

    from .io import ImageLoadError, find_images, printable_name

    by_stem: dict[str, Path] = {}
    for path in find_images(paths):
        by_stem.setdefault(path.stem, path)
    masks = []
    for image in image_paths:
        stem = Path(image).stem
        if stem not in by_stem:
            raise ImageLoadError(
                f"no mask for image {printable_name(Path(image).name)!r}: expected a mask file named "
                f"{printable_name(stem)}.<ext>"
            )
        try:
            with Image.open(by_stem[stem]) as img:
                mask = img.convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
        except (OSError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(f"cannot read mask {printable_name(str(by_stem[stem]))!r}: {exc}") from exc
        masks.append(np.asarray(mask) > 127)
    return np.stack(masks).astype(np.float32)


@dataclass
class _Job:
    """An ``explain`` / ``evaluate`` command, checked: what to run and where to write."""

    methods: list[str]
    metrics: list[str]
    params: dict[str, dict[str, Any]]
    target: int | None
    class_names: list[str] | None
    out: Path
    size: tuple[int, int] | None


@dataclass
class _Inputs:
    """The loaded model, the images (for display and in the model's layout) and the masks."""

    loaded: Any
    batch: Any
    model_inputs: Any
    masks: Any


def _explain_or_evaluate(args: argparse.Namespace, with_metrics: bool) -> int:
    from .evaluation import evaluate

    job = _check_job(args, with_metrics)
    inputs = _load_inputs(args, job)
    predictions, targets = _targets(args, job, inputs)
    shape = inputs.batch.images.shape
    print(
        f"{PROG}: {len(inputs.batch.names)} image(s) {shape[2]}x{shape[1]}, {inputs.loaded.source}, "
        f"{len(job.methods)} method(s)" + (f", {len(job.metrics)} metric(s)" if with_metrics else "")
    )
    print(_explained_classes(inputs.batch.names, targets, job))
    maps = _MapWriter(args, job.out, inputs.batch)
    try:
        table = evaluate(
            inputs.loaded.model,
            inputs.model_inputs,
            targets,
            methods=job.methods,
            metrics=job.metrics,
            masks=inputs.masks,
            method_params={m: job.params[m] for m in job.methods if m in job.params},
            metric_params={m: job.params[m] for m in job.metrics if m in job.params},
            batch_size=args.batch_size,
            progress=False if args.no_progress else None,
            echo=print,
            keep_going=not args.debug,
            output=args.output,
            on_maps=maps,
        )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {maps.summary()}", file=sys.stderr)
        return 130
    print(maps.summary())
    if with_metrics:
        _write_scores_and_report(args, job, inputs, predictions, table)
    return _report_failures(table.failures)


def _check_job(args: argparse.Namespace, with_metrics: bool) -> _Job:
    """Every option, file and the output folder, checked before a framework is imported or a
    model loaded; what is refused raises :class:`UsageError` (exit status 2)."""
    from .errors import XaiToolboxError

    try:
        return _checked_job(args, with_metrics)
    except (CliError, XaiToolboxError) as exc:
        raise UsageError(_one_line(exc)) from exc


def _checked_job(args: argparse.Namespace, with_metrics: bool) -> _Job:
    from .demo_job import resolve_names
    from .io import image_sizes, output_path, unique_stems

    methods = resolve_names("method", args.method or list(DEFAULT_EXPLAIN_METHODS))
    metrics = _select_metrics(args) if with_metrics else []
    params = _parse_params(args.param, [*methods, *metrics])
    built = [checks.build_without_model("method", m, params.get(m, {}), args.batch_size) for m in methods]
    for metric in metrics:
        checks.build_without_model("metric", metric, params.get(metric, {}), args.batch_size)
    target = _parse_target(args.target)
    size = checks.image_size(args.size)
    checks.normalisation(args.mean, args.std)
    if args.cmap is not None:  # None: chosen by each map's sign
        checks.colormap(args.cmap)
    sized = image_sizes(args.images)  # missing or unreadable files fail here, from their headers
    checks.model_spec(str(args.model), args.weights)
    if _mask_paths(args):
        image_sizes(args.masks)
    class_names = _read_class_names(args.class_names)
    checks.memory(len(sized), [hw for _, hw in sized], size, built)
    out = Path(args.out)
    stems = unique_stems([path.name for path, _ in sized])
    names = [output_path(out, stem, m, suffix=suffix).name for stem in stems for m in methods for suffix in (".npy", ".png")]
    checks.output_folder(out, [*names, *(("scores.csv", "report.html") if with_metrics else ())])
    return _Job(methods, metrics, params, target, class_names, out, size)


def _select_metrics(args: argparse.Namespace) -> list[str]:
    """``--metric`` names, or every metric but the slow ones (and those needing masks without
    ``--masks``)."""
    from .demo_job import DEFAULT_EXCLUDED_METRICS, resolve_names

    registry = get_registry()
    if args.metric:
        metrics = resolve_names("metric", args.metric)
    else:
        metrics = [
            m for m in resolve_names("metric", None, exclude=DEFAULT_EXCLUDED_METRICS)
            if args.masks or not registry.metrics[m].cls.needs_masks
        ]
    if not args.masks:
        needing = [m for m in metrics if registry.metrics[m].cls.needs_masks]
        if needing:
            raise CliError(f"metric(s) {', '.join(needing)} need ground-truth masks: pass --masks")
    return metrics


def _mask_paths(args: argparse.Namespace) -> Sequence[str] | None:
    return getattr(args, "masks", None)  # `explain` has no --masks


def _load_inputs(args: argparse.Namespace, job: _Job) -> _Inputs:
    from .io import load_images, load_model, normalize, to_model_layout

    loaded = load_model(args.model, weights=args.weights, trust_model_code=args.trust_model_code)
    size = job.size or loaded.input_size
    channels = 1 if loaded.channels == 1 else 3
    batch = load_images(args.images, size=size, channels=channels)
    model_inputs = to_model_layout(normalize(batch.images, args.mean, args.std), loaded.framework)
    mask_paths = _mask_paths(args)
    masks = _load_masks(mask_paths, batch.paths, batch.images.shape[1:3]) if mask_paths else None
    return _Inputs(loaded, batch, model_inputs, masks)


def _targets(args: argparse.Namespace, job: _Job, inputs: _Inputs) -> tuple[Any, Any]:
    """The model's predictions, and the classes to explain (``--target`` or the predictions)."""
    import numpy as np

    from .evaluation import top1

    # Raises ScoreFunctionError for a model that is not a classifier: the CLI explains classes.
    predictions, n_classes = top1(
        inputs.loaded.model, inputs.model_inputs, batch_size=args.batch_size, output=args.output
    )
    if job.target is not None and job.target >= n_classes:
        raise CliError(
            f"--target {job.target} is out of range: the model has {n_classes} outputs (0..{n_classes - 1})"
        )
    if job.class_names is not None and len(job.class_names) != n_classes:
        raise CliError(f"--class-names lists {len(job.class_names)} names but the model has {n_classes} outputs")
    if job.target is None:
        return predictions, predictions
    return predictions, np.full(len(predictions), job.target, dtype=np.int64)


def _explained_classes(names: Sequence[str], targets: Any, job: _Job, shown: int = 6) -> str:
    """One line saying which class is explained for each image (the first ``shown``)."""

    def label(k: int) -> str:
        named = job.class_names is not None and 0 <= k < len(job.class_names)
        return f"{k} ({job.class_names[k]})" if named else str(k)

    if job.target is not None:
        return f"explaining class {label(job.target)} for every image (--target)"
    pairs = [f"{name}: {label(int(k))}" for name, k in zip(names, targets, strict=True)]
    more = f", ... ({len(pairs) - shown} more)" if len(pairs) > shown else ""
    return "explaining each image's top-1 class: " + ", ".join(pairs[:shown]) + more


class _MapWriter:
    """Writes ``OUT/<image>_<method>.npy`` (the map) and ``.png`` (the overlay) for each image,
    as soon as a method has explained (``evaluate``'s ``on_maps``)."""

    def __init__(self, args: argparse.Namespace, out: Path, batch: Any) -> None:
        from .io import unique_stems

        self.args, self.out, self.batch = args, out, batch
        self.stems = unique_stems(batch.names)
        self.methods: list[str] = []

    def __call__(self, method: str, maps: Any) -> None:
        from .io import npy_bytes, output_path, write_output
        from .plot import overlay
        from .report import png_bytes

        overlays = overlay(self.batch.images, maps, alpha=self.args.alpha, cmap=self.args.cmap, channels_first=False)
        for i, stem in enumerate(self.stems):
            write_output(self.out, output_path(self.out, stem, method, suffix=".npy").name, npy_bytes(maps[i]))
            write_output(self.out, output_path(self.out, stem, method, suffix=".png").name, png_bytes(overlays[i]))
        self.methods.append(method)

    def summary(self) -> str:
        count = 2 * len(self.stems) * len(self.methods)
        done = f" for {', '.join(self.methods)}" if self.methods else ""
        return f"wrote {count} files (.npy maps and .png overlays){done} to {self.out}"


def _write_scores_and_report(
    args: argparse.Namespace, job: _Job, inputs: _Inputs, predictions: Any, table: Any
) -> None:
    """The ranked table on the terminal, ``OUT/scores.csv`` and ``OUT/report.html``."""
    from .report import collect_scores, format_summary, terminal_width, write_report

    scores = collect_scores(table)
    if scores:
        print()
        print(format_summary(scores, table.timings, width=None if args.wide else terminal_width()))
        _write_csv(job.out, scores)
    batch = inputs.batch
    settings = {
        "model": inputs.loaded.source,
        "images": f"{len(batch.names)} file(s), {batch.images.shape[2]}x{batch.images.shape[1]}",
        "normalisation": {"mean": args.mean or "none", "std": args.std or "none"},
        "target": "top-1 prediction" if job.target is None else f"class {job.target}",
        "model output": "automatic" if args.output is None else repr(args.output),
        "batch_size": args.batch_size,
        "methods": table.params["methods"],
        "metrics": table.params["metrics"],
    }
    report = write_report(
        job.out / "report.html",
        images=batch.images,
        maps=table.maps,
        results=table,
        names=batch.names,
        predictions=predictions,
        labels=None,
        class_names=job.class_names,
        settings=settings,
        timings=table.timings,
        notes=[f"FAILED {what}: {why}" for what, why in table.failures.items()],
        title=f"xai-toolbox evaluation — {Path(str(args.model)).name}",
        channels_first=False,
        max_images=args.max_report_images,
        alpha=args.alpha,
        cmap=args.cmap,
    )
    print(f"report: {report}")


def _write_csv(out: Path, scores: Sequence[Any]) -> None:
    import csv
    import io

    from .io import write_output

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["method", "metric", "mean", "std", "n", "higher_is_better", "ci_low", "ci_high", "family"])
    for s in scores:
        writer.writerow([
            s.method, s.metric, f"{s.mean:.6g}", f"{s.std:.6g}", s.n, s.higher_is_better,
            f"{s.low:.6g}", f"{s.high:.6g}", s.family,
        ])
    write_output(out, "scores.csv", text.getvalue())


def _cmd_explain(args: argparse.Namespace) -> int:
    return _explain_or_evaluate(args, with_metrics=False)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    return _explain_or_evaluate(args, with_metrics=True)


# -- parser ---------------------------------------------------------------------------------------
_MODEL_HELP = """\
model:
  --model accepts
    pkg.module:factory         a function returning an nn.Module or keras.Model (your code),
    path/to/file.py:factory    (same, from a file); add --weights state.pth (PyTorch state dict,
                               read with torch.load(weights_only=True)) or --weights x.weights.h5,
    model.keras                a Keras 3 file, loaded with safe_mode=True, or
    model.pt / model.ts        a TorchScript archive (torch.jit.script(model).save(path)):
                               needs --trust-model-code (see below).
  Files that hold code can run arbitrary code, so they need --trust-model-code: TorchScript
  archives (their scripted forward runs on every call and can read and write files), pickled
  whole models (torch.save(model)), legacy .h5 models and .keras files with Lambda layers
  (they run code while loading). Use it only for files you trust; the factory + --weights
  path needs no trust.
  TorchScript models have no module hooks: CAM methods need a factory-loaded model.
"""

_EXPLAIN_EPILOG = _MODEL_HELP + """
examples:
  xai-toolbox explain --model resnet.ts --trust-model-code --size 224 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --method saliency --method rise photos/
  xai-toolbox explain --model torchvision.models:resnet18 --weights r18.pth \\
      --method gradcam --param gradcam.layer=layer4 cat.jpg dog.jpg
  xai-toolbox explain --model classifier.keras --method gradcam --target 3 images/
"""

_EVALUATE_EPILOG = _MODEL_HELP + """
examples:
  xai-toolbox evaluate --model classifier.keras --method gradcam --method rise \\
      --metric deletion --metric insertion images/ --out eval-out
  xai-toolbox evaluate --model net.ts --trust-model-code --size 64 --method saliency \\
      --masks masks/ images/
  (masks/ holds one mask per image with the same file stem; nonzero = object)
"""

_DEMO_EPILOG = """\
examples:
  xai-toolbox demo                                   # PyTorch, every method and metric
  xai-toolbox demo --framework tf --out tf-demo
  xai-toolbox demo --methods gradcam rise sobol --metrics deletion pointing_game
  xai-toolbox demo --quick --n-images 4              # a smoke test of a few seconds

The demo's hyper-parameters are DEMO_PARAMS in xai_toolbox/demo_job.py (listed in the
report's settings). The slowest metrics are left out unless asked for: those that
re-explain every image many times (--metrics ... randomization, the stability metrics, ROAD).
"""


def _add_model_arguments(p: argparse.ArgumentParser, with_metrics: bool) -> None:
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) and/or folders of them")
    p.add_argument("--model", required=True, help="model file or package.module:factory (see below)")
    p.add_argument("--weights", help="weights for a factory's model: a PyTorch state dict or Keras .weights.h5")
    p.add_argument(
        "--trust-model-code",
        action="store_true",
        help="allow model files that hold code: TorchScript archives, pickled modules, legacy .h5, "
        "Lambda layers — only for files you trust",
    )
    p.add_argument(
        "--size", nargs="+", type=checks.positive_int, metavar="N",
        help="resize images to H W (or one int for square); default: the model's declared input size "
        "(Keras), else the images' own size",
    )
    p.add_argument("--mean", nargs="+", type=checks.finite_float, metavar="M",
                   help="per-channel mean subtracted before the model")
    p.add_argument("--std", nargs="+", type=checks.positive_float, metavar="S",
                   help="per-channel std divided by before the model")
    p.add_argument("--target", default="top1", help="class index to explain, or 'top1' (default): the model's prediction")
    p.add_argument(
        "--method", action="append", metavar="NAME",
        help=f"method to run (repeatable; default: {', '.join(DEFAULT_EXPLAIN_METHODS)}); see 'xai-toolbox list'",
    )
    if with_metrics:
        p.add_argument(
            "--metric", action="append", metavar="NAME",
            help="metric to score (repeatable; default: every metric that needs no masks, or all with "
            "--masks, except randomization)",
        )
        p.add_argument("--masks", nargs="+", metavar="PATH", help="ground-truth masks (files or folder) matched to images by file stem")
        p.add_argument("--max-report-images", type=checks.non_negative_int, default=32, metavar="N",
                       help="images shown in the report (default 32)")
    p.add_argument(
        "--param", action="append", metavar="NAME.KEY=VALUE",
        help="a hyper-parameter of a method or metric, e.g. rise.nb_samples=2000 or gradcam.layer=layer4 "
        "(repeatable; values are JSON, else text)",
    )
    p.add_argument("--batch-size", type=checks.positive_int, default=64, help="model inputs per forward pass (default 64)")
    p.add_argument(
        "--output", type=_output_selector, default=None, metavar="KEY|INDEX",
        help="which model output to explain when the model returns a dict, tuple or dataclass: a key "
        "(e.g. logits) or an index (e.g. 0); default: the obvious one (logits, or the only tensor)",
    )
    p.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")
    p.add_argument("--alpha", type=checks.fraction, default=0.8,
                   help="heatmap opacity of the overlays where |value| is largest, in [0, 1] (default 0.8)")
    p.add_argument("--cmap", default=None,
                   help="colormap of the overlays (default: viridis, and RdBu_r centred on zero for signed maps)")
    p.add_argument("--out", default="xai-evaluation" if with_metrics else "xai-explanations",
                   help="output folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if with_metrics:
        p.add_argument("--wide", action="store_true",
                       help="print the score table in one piece (default: cut to the terminal width)")


def _wrap(text: str) -> str:
    # Raw formatters keep the epilogs' examples as written; descriptions are wrapped here.
    return textwrap.fill(text, width=88)


def _output_selector(text: str) -> str | int:
    """``--output``: an integer index, or a key."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("must be a key or an index, got an empty string")
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .testing import installed_frameworks

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser = _Parser(
        prog=PROG,
        description="Explanations for image classifiers on PyTorch and TensorFlow/Keras.",
        epilog="examples:\n  xai-toolbox list\n  xai-toolbox demo\n  xai-toolbox explain --model net.ts cat.png\n"
        "  xai-toolbox evaluate --model net.keras --method gradcam images/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", parents=[common], help="list methods and metrics",
                       epilog="example: xai-toolbox list", description="List the registered methods and metrics.")
    p.set_defaults(func=_cmd_list)

    frameworks = installed_frameworks() or ["torch", "tf"]
    p = sub.add_parser(
        "demo", parents=[common], help="explain and score the embedded demo model (the main job)",
        description=_wrap(
            "Explain held-out images of the embedded demo CNN with every method, score the "
            "explanations with every metric (pointing games against the true object masks), print a "
            "ranked table and write OUT/report.html."
        ),
        epilog=_DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--framework", choices=["torch", "tf"], default=frameworks[0],
                   help="which twin of the demo model to explain (default: %(default)s)")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="methods (default: every registered one)")
    p.add_argument("--metrics", nargs="+", metavar="NAME", help="metrics (default: every registered one but the slow ones, see below)")
    p.add_argument("--n-images", type=_positive, default=8, help="held-out images to explain (default 8)")
    p.add_argument("--out", default="xai-demo", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="seed of the held-out images (default: the demo's held-out seed)")
    p.add_argument("--quick", action="store_true", help="reduced settings: a smoke test of a few seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--wide", action="store_true",
                   help="print the score table in one piece (default: cut to the terminal width)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "explain", parents=[common], help="explain your own model on your images",
        description=_wrap(
            "Explain a model's predictions on image files: writes OUT/<image>_<method>.npy "
            "(the map, H x W float32) and OUT/<image>_<method>.png (an overlay)."
        ),
        epilog=_EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(p, with_metrics=False)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "evaluate", parents=[common], help="explain and score your own model; HTML report",
        description=_wrap(
            "Explain a model's predictions on image files and score the explanations: "
            "writes the maps and overlays as 'explain' does, OUT/scores.csv and OUT/report.html."
        ),
        epilog=_EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(p, with_metrics=True)
    p.set_defaults(func=_cmd_evaluate)

    from .datasets.cli import add_commands as add_dataset_commands

    add_dataset_commands(sub, common)
    return parser


def _one_line(exc: BaseException) -> str:
    from .errors import XaiToolboxError

    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and not isinstance(exc, XaiToolboxError):
        text = text.strip("'\"")  # KeyError's str() is the repr of its argument
    if not text:
        text = type(exc).__name__

    if not isinstance(exc, XaiToolboxError | CliError | OSError | ValueError):
        text = f"{type(exc).__name__}: {text} (run with --debug for the traceback)"
    return text


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xai-toolbox`` command (returns the exit status)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # Each method builds its own adapter, hence its own tf.function: TensorFlow's "retracing"
    # warnings are expected here and would only drown the progress lines.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    args.debug = debug
    # TensorFlow's C++ start-up lines (oneDNN, CUDA probes) off the terminal; --debug keeps them.
    with warnings.catch_warnings(), native_logs_filtered(active=not debug):
        if not debug:
            warnings.showwarning = _show_warning
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except UsageError as exc:
            if debug:  # the check's own exception, with its traceback
                raise (exc.__cause__ or exc) from None
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            if debug:
                raise
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
