"""Command line: ``xai-toolbox list`` (methods and metrics with the package providing each)."""

from __future__ import annotations

import argparse
import sys

from .registry import get_registry


def _cmd_list(args: argparse.Namespace) -> int:
    registry = get_registry()
    for title, table in (("methods", registry.methods), ("metrics", registry.metrics)):
        print(f"{title}:")
        if not table:
            print("  (none)")
        for name in sorted(table):
            entry = table[name]
            print(f"  {name:<24} {entry.cls.__name__:<24} {entry.package} ({entry.plugin})")
    if registry.failed:
        print("plugins that failed to load:")
        for name, why in sorted(registry.failed.items()):
            print(f"  {name}: {why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xai-toolbox",
        description="Explanations for image classifiers on PyTorch and TensorFlow/Keras.",
        epilog="example: xai-toolbox list",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list methods and metrics", epilog="example: xai-toolbox list")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        if args.debug:
            raise
        print(f"xai-toolbox: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
