"""The command line's checks that run before a framework is imported or a model loaded.

``explain`` and ``evaluate`` check every option here first — values (argparse types), the
hyper-parameters given with ``--param`` (each method and metric is built without a model: its
constructor validates), the model and weights paths, the output folder (created, written to,
no symbolic link where an output will go) and the memory the images and the methods' passes
need — so a bad command fails in a second with one line and exit status 2, not after the model
has loaded and every method has run.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._budget import check_workload
from .errors import XaiToolboxError


class UsageError(Exception):
    """A command refused before anything ran (a bad option, a missing file): exit status 2."""


# -- argparse types: a bad value is a usage error (exit 2) at parse time -----------------------
def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite real number (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a standard deviation)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (an opacity)."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# -- checks ------------------------------------------------------------------------------------
def image_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    """``--size``: one int (square) or two (H W)."""
    if size is None:
        return None
    if len(size) not in (1, 2):
        raise UsageError(f"--size takes one integer (square) or two (H W), got {len(size)}")
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def normalisation(mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """``--mean`` / ``--std``: one value (every channel) or three (RGB)."""
    for name, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, 3):
            raise UsageError(f"{name} takes one value (every channel) or three (R G B), got {len(values)}")


def colormap(cmap: str) -> None:
    """``--cmap``: a name the overlays can use."""
    from .plot import colormap as lookup

    lookup(cmap)


def model_spec(model: str, weights: str | None) -> None:
    """``--model`` names an existing file or a ``module:factory`` (a ``.py`` one exists);
    ``--weights`` exists and goes with a factory."""
    from .io import _split_factory

    path = Path(model)
    factory = None if path.exists() else _split_factory(model)
    if factory is None and not path.exists():
        raise UsageError(f"model file not found: {model!r} (or give package.module:factory)")
    if factory is not None and factory[0].endswith(".py") and not Path(factory[0]).is_file():
        raise UsageError(f"model factory file not found: {factory[0]!r}")
    if weights is not None:
        if factory is None:
            raise UsageError("--weights needs a factory (--model package.module:factory); a model file holds its weights")
        if not Path(weights).is_file():
            raise UsageError(f"weights file not found: {weights!r}")


def build_without_model(kind: str, name: str, params: dict[str, Any], batch_size: int) -> Any:
    """The method or metric ``name`` built with ``model=None``: constructors only validate and
    store, so a bad ``--param`` (an unknown name, a bad value) fails here. ``None`` for a
    plugin whose constructor needs the model (it is checked when it runs)."""
    from .registry import get_registry

    registry = get_registry()
    cls = (registry.method if kind == "method" else registry.metric)(name).cls
    try:
        return cls(None, batch_size=batch_size, **params)
    except XaiToolboxError as exc:
        raise UsageError(f"--param {name}: {exc}") from None
    except Exception:  # a third-party constructor that looks at the model: checked when run
        return None


def memory(n_images: int, sizes: Sequence[tuple[int, int]], size: tuple[int, int] | None, methods: Sequence[Any]) -> None:
    """The images as the command reads them (RGB float32: the batch, its normalised copy and the
    copy in the model's layout) and each method's passes on them must fit in memory."""
    biggest = max(h * w for h, w in sizes) if size is None else size[0] * size[1]
    hw = size or max(sizes, key=lambda s: s[0] * s[1])
    how = f"--size {hw[0]} {hw[1]}" if size else f"images of {hw[0]}x{hw[1]}"
    try:
        check_workload("xai-toolbox", held_bytes=3 * n_images * biggest * 3 * 4,
                       cause=f"{n_images} image(s), {how}, float32 RGB")
        for method in methods:  # one channel: a lower bound whatever the model takes
            if method is not None:
                method.check_workload((n_images, 1, *hw))
    except XaiToolboxError as exc:
        raise UsageError(str(exc)) from None


def output_folder(out: Path, names: Sequence[str]) -> None:
    """``--out`` is (or can be made) a writable folder, and none of the files the command will
    write there (``names``) is a symbolic link or a folder."""
    from .io import check_output_name, write_output

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = write_output(out, ".xai-toolbox-write-test", b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {str(out)!r} cannot be written: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r} cannot be written")
    try:
        for name in names:
            check_output_name(out, name)
    except XaiToolboxError as exc:
        raise UsageError(str(exc)) from None
