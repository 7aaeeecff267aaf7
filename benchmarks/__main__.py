"""``python -m benchmarks``: run the benchmarks and write JSON + Markdown results.

Example:
    python -m benchmarks --framework torch --device cpu --quick --out bench-out
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SECTIONS = ("overhead", "naive", "naive-compiled", "gradients", "peers", "xplique", "quality", "compile", "precision", "memory")
#: What runs without --sections: the slow side-by-side, quality and compilation sections are asked for.
DEFAULT_SECTIONS = ("overhead", "naive", "naive-compiled", "gradients", "peers", "precision", "memory")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=("torch", "tf"), default="torch")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="smaller workloads (about 2 minutes)")
    p.add_argument("--out", default="bench-out", help="folder for bench-<framework>-<device>.json/.md")
    p.add_argument(
        "--sections", default=",".join(DEFAULT_SECTIONS),
        help=f"comma list among {', '.join(SECTIONS)} (default {','.join(DEFAULT_SECTIONS)})",
    )
    p.add_argument("--only", default="", help="comma list of method/metric names to keep (default all)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default 2)")
    p.add_argument("--width", type=int, default=None, help="base width of the ResNet (default 32)")
    p.add_argument("--quality-divisor", type=int, default=None,
                   help="quality section: divide every sample count by N (default 8 with --quick, else 1)")
    p.add_argument("--ours", default="", metavar="OPTIONS",
                   help="xplique section: our adapter's options, e.g. compile=true or "
                        "memory_format=channels_last (default: xt.adapt's defaults)")
    p.add_argument("--render", default=None, metavar="JSON", help="only rewrite the Markdown of a results file")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: one memory setting
    return p.parse_args(argv)


def adapter_options(text: str) -> dict[str, object]:
    """``"compile=true,memory_format=channels_last"`` → ``{"compile": True, "memory_format": "channels_last"}``.

    Example:
        >>> adapter_options("compile=true")
        {'compile': True}
    """
    options: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--ours: expected KEY=VALUE, got {item!r}")
        options[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # Imported only now: the environment above must be set before any framework loads.
    from .config import default_config
    from .harness import run
    from .memory import memory_child
    from .report import markdown

    if args.memory_child is not None:  # a child process of the memory section
        print(json.dumps(memory_child(json.loads(args.memory_child))), flush=True)
        return 0
    if args.render is not None:
        from pathlib import Path

        path = Path(args.render)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        print(f"wrote {path.with_suffix('.md')}", file=sys.stderr)
        return 0
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"unknown sections {unknown}; choose among {SECTIONS}", file=sys.stderr)
        return 2
    cfg = default_config(args.framework, args.device, quick=args.quick, out=args.out)
    if args.repeats is not None:
        cfg.repeats = args.repeats
    if args.threads is not None:
        cfg.threads = args.threads
    if args.quality_divisor is not None:
        cfg.quality_divisor = args.quality_divisor
    if args.width is not None:
        cfg.width = args.width
    if args.ours:
        cfg.xplique_adapter = adapter_options(args.ours)
    if args.only:
        keep = {n.strip() for n in args.only.split(",")}
        cfg.overhead = [c for c in cfg.overhead if c.name in keep]
        cfg.gradients = [c for c in cfg.gradients if c.name in keep]
        cfg.peers = [c for c in cfg.peers if c.name in keep]
        cfg.memory = [c for c in cfg.memory if c.name in keep]
        cfg.precision = [n for n in cfg.precision if n in keep]
    if args.device == "cuda":
        _check_cuda(args.framework)
    run(cfg, sections)
    return 0


def _check_cuda(framework: str) -> None:
    if framework == "torch":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    else:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            raise SystemExit("--device cuda: TensorFlow sees no GPU on this machine")


if __name__ == "__main__":
    sys.exit(main())
