"""Readings of the machine and the framework the numbers depend on.

Thread settings (:func:`setup_framework`), versions and hardware (:func:`environment`), load
averages and the CPU time stolen by a hypervisor during a run, and the benchmark model's size.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .workbench import Workbench


def setup_framework(framework: str, threads: int | None) -> None:
    """Pin the thread count (must run before the framework does any work)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if threads is None:
        return
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # already initialised (e.g. inside a test run)
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)


def environment(framework: str, device: str) -> dict[str, Any]:
    """What the numbers depend on: CPU model, cores, versions, threads, commit."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "framework": framework,
        "device": device,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["eagerpy"] = importlib.metadata.version("eagerpy")
    if framework == "torch":
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info["captum"] = importlib.metadata.version("captum")  # no import: it takes seconds
    else:
        import keras
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["keras"] = keras.__version__
        info["threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    with contextlib.suppress(Exception):
        root = Path(__file__).resolve().parents[1]
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    return info


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``: user … steal), ``None`` off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def steal_share(start: list[int] | None, end: list[int] | None) -> float | None:
    """Share of the CPU time the hypervisor gave to other machines between two readings: on a
    virtual machine with busy neighbours this is what makes timings drift."""
    if start is None or end is None or len(start) < 8 or len(end) < 8:
        return None
    total = sum(end) - sum(start)
    return (end[7] - start[7]) / total if total > 0 else None


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: a benchmark on a busy machine should say so."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def model_info(cfg: Config, bench: Workbench) -> dict[str, Any]:
    from .models import parameter_count, resnet_weights

    if cfg.model == "cnn":
        from xai_toolbox.testing import cnn_weights

        weights = cnn_weights(cfg.seed, classes=cfg.classes, width=cfg.width)
        name = f"test CNN (xai_toolbox.testing.cnn), width {cfg.width}"
    else:
        weights = resnet_weights(cfg.seed, width=cfg.width, classes=cfg.classes)
        name = f"ResNet-18-like, width {cfg.width}"
    return {
        "name": name,
        "input": [3, cfg.size, cfg.size],
        "classes": cfg.classes,
        "parameters": parameter_count(weights),
        "n_images": bench.x.shape[0],
        "batch_size": cfg.batch_size,
    }
