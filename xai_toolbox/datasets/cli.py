"""The command-line verbs of dataset runs: ``xai-toolbox run`` and ``xai-toolbox report``.

Every option is checked, and the first image read, before the model is loaded; a bad option
prints one line ``xai-toolbox: error: ...`` and exits with status 2. A run stopped with Ctrl-C
keeps what it committed and exits with 130; the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from ..errors import XaiToolboxError

__all__ = ["add_commands"]

PROG = "xai-toolbox"

_RUN_EPILOG = """\
data:
  DATA is a folder of images (class sub-folders as labels, or --labels FILE) or a .npy
  array in the model's layout (--labels labels.npy). Python users pass PyTorch datasets,
  tf.data, Ray Datasets and generators to xt.explain_dataset.

model:
  --model is a TorchScript or .keras file, or package.module:factory / file.py:factory
  (see 'xai-toolbox explain --help'); the ray engine builds it once per actor.

results (--out):
  maps/<method>-<hash>.zarr (Zarr arrays, one chunk per group of images) and
  records/*.parquet (one row per image x method [x metric]); run the same command again to
  resume: only what is missing is computed.

examples:
  xai-toolbox run val/ --model resnet.py:build --size 224 --mean 0.485 0.456 0.406 \\
      --std 0.229 0.224 0.225 --method gradcam --method rise --metric deletion --out runs/val
  xai-toolbox run val/ --model resnet.py:build --size 224 --engine ray --address auto \\
      --workers 8 --gpus-per-worker 1 --method sobol --metric deletion --out /shared/runs/val
  xai-toolbox report runs/val
"""


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``run`` and ``report`` to the ``xai-toolbox`` sub-command parser."""
    p = sub.add_parser(
        "run", parents=[common], help="explain and evaluate a whole dataset (resumable; local or Ray)",
        description=textwrap.fill(
            "Explain every image of a dataset with each method, score each map with each metric, "
            "and store maps (Zarr) and per-image records (Parquet) in --out; re-running the same "
            "command computes only what is missing.", width=88),
        epilog=_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="a folder of images or a .npy array")
    p.add_argument("--model", required=True, help="model file or package.module:factory")
    p.add_argument("--weights", help="weights for a factory's model (PyTorch state dict or .weights.h5)")
    p.add_argument("--trust-model-code", action="store_true", help="allow model formats that run code while loading")
    p.add_argument("--method", action="append", metavar="NAME", help="method to run (repeatable; default: saliency)")
    p.add_argument("--metric", action="append", metavar="NAME", help="metric to score (repeatable; default: none)")
    p.add_argument("--param", action="append", metavar="NAME.KEY=VALUE",
                   help="a method or metric parameter, e.g. rise.nb_samples=2000 (repeatable; JSON values)")
    p.add_argument("--labels", metavar="FILE", help="labels file (folder) or labels .npy (array)")
    p.add_argument("--size", nargs="+", type=int, metavar="N", help="resize image files to H W (or one int)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="channels read from image files (default 3)")
    p.add_argument("--mean", nargs="+", type=float, metavar="M", help="per-channel mean subtracted from image files")
    p.add_argument("--std", nargs="+", type=float, metavar="S", help="per-channel std image files are divided by")
    p.add_argument("--preprocess", metavar="SPEC",
                   help="module:function or file.py:function applied to each raw image, or 'model': the "
                   "preprocess() of the model factory's module")
    p.add_argument("--target", default="top1", help="'top1' (default: the prediction), 'label' or a class index")
    p.add_argument("--batch-size", type=int, default=64, help="model inputs per forward pass (default 64)")
    p.add_argument("--group-size", type=int, default=16, help="images per unit of work, Zarr chunk and commit (default 16)")
    p.add_argument("--seed", type=int, default=0, help="base seed of stochastic methods and metrics (default 0)")
    p.add_argument("--map-dtype", choices=["float32", "float16"], default="float32", help="maps on disk (default float32)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where to run (default local)")
    p.add_argument("--workers", type=int, default=1, help="Ray actors (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray actor (default 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    p.add_argument("--address", help="Ray cluster to join ('auto', ray://host:10001); default: start a local one")
    p.add_argument("--ray-init", metavar="JSON", help='more ray.init arguments, e.g. \'{"num_cpus": 4}\'')
    p.add_argument("--commit-every", type=float, default=10.0, help="seconds between record commits (default 10)")
    p.add_argument("--out", default="xai-dataset", help="results folder (default: %(default)s)")
    p.add_argument("--report", action="store_true", help="write OUT/report.html at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "report", parents=[common], help="HTML report of a dataset run",
        description=textwrap.fill(
            "Write an HTML report of a results folder of 'xai-toolbox run': scores with confidence "
            "intervals, a per-class breakdown, the best and worst images with their maps.", width=88),
        epilog="example:\n  xai-toolbox report runs/val --top 6", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="the results folder (--out of 'xai-toolbox run')")
    p.add_argument("--out", help="the report file (default: DIR/report.html)")
    p.add_argument("--top", type=int, default=4, help="best and worst images per method and metric (default 4)")
    p.add_argument("--max-classes", type=int, default=100, help="classes in the per-class tables (default 100)")
    p.set_defaults(func=_cmd_report)


def _usage_error(exc: BaseException) -> int:
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError):  # str() of a KeyError is the repr of its message
        text = text.strip("'\"")
    text = text or type(exc).__name__
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from ..cli import CliError, _parse_params
    from .runner import prepare_run

    try:
        job = prepare_run(args.data, args.model, **_run_options(args, _parse_params, CliError))
    except (XaiToolboxError, CliError, ValueError, ImportError, OSError) as exc:
        if args.debug:
            raise
        return _usage_error(exc)
    run = job.run()
    print(f"{PROG}: {run.summary()}")
    if run.failures:
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(run.failures.items()))
        print(f"{PROG}: warning: {run.failed} record(s) failed ({reasons}); their reasons are in the records", file=sys.stderr)
    if args.report:
        from .report import write_dataset_report

        print(f"report: {write_dataset_report(run)}")
    return 0


def _run_options(args: argparse.Namespace, parse_params: Any, cli_error: type[Exception]) -> dict[str, Any]:
    from ..registry import get_registry

    methods = args.method or ["saliency"]
    metrics = args.metric or []
    for name in (*methods, *metrics):
        if "." in name:
            raise cli_error(f"{name!r} is not a method or metric name (parameters go in --param NAME.KEY=VALUE)")
    registry = get_registry()
    for name in methods:
        registry.method(name)
    for name in metrics:
        registry.metric(name)
    params = parse_params(args.param, [*methods, *metrics])
    try:
        ray_init = json.loads(args.ray_init) if args.ray_init else None
    except json.JSONDecodeError as exc:
        raise cli_error(f"--ray-init must be a JSON object: {exc}") from None
    if ray_init is not None and not isinstance(ray_init, dict):
        raise cli_error("--ray-init must be a JSON object, e.g. '{\"num_cpus\": 4}'")
    target: Any = args.target
    if target in ("top1", "top-1", "pred", "predicted"):
        target = "top1"
    elif target.isdigit():
        target = int(target)
    return {
        "out": args.out, "methods": methods, "metrics": metrics,
        "method_params": {m: params[m] for m in methods if m in params},
        "metric_params": {m: params[m] for m in metrics if m in params},
        "weights": args.weights, "trust_model_code": args.trust_model_code, "labels": args.labels,
        "size": args.size, "channels": args.channels, "mean": args.mean, "std": args.std,
        "preprocess": args.preprocess, "targets": target, "batch_size": args.batch_size,
        "group_size": args.group_size, "seed": args.seed, "map_dtype": args.map_dtype, "engine": args.engine,
        "workers": args.workers, "gpus_per_worker": args.gpus_per_worker, "cpus_per_worker": args.cpus_per_worker,
        "address": args.address, "ray_init": ray_init, "commit_every": args.commit_every,
        "progress": False if args.no_progress else None,
    }


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_dataset_report
    from .runner import open_results

    try:
        if args.top < 0 or args.max_classes < 1:
            raise ValueError("--top must be >= 0 and --max-classes >= 1")
        results = open_results(args.dir)
    except (XaiToolboxError, ValueError, ImportError, OSError) as exc:
        if args.debug:
            raise
        return _usage_error(exc)
    path = write_dataset_report(results, args.out, top=args.top, max_classes=args.max_classes)
    print(f"report: {path}")
    return 0
