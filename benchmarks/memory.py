"""The memory section: peak memory of a call as its work grows, one fresh process per setting.

:func:`run_memory_case` spawns ``python -m benchmarks --memory-child SPEC`` for each setting,
which runs :func:`memory_child` in that process; on CPU the peak RSS (Linux ``VmHWM``, reset
just before the call; ``ru_maxrss`` elsewhere), on CUDA the framework's allocator peak.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from .building import make, resolve
from .config import MMAP_THRESHOLD, Config, MemoryCase
from .machine import setup_framework
from .workbench import Workbench, counting, summarize_calls

# The settings a child process rebuilds its Config from (the case lists are not sent).
_SCALAR_FIELDS = {
    f.name for f in dataclasses.fields(Config)
    if f.name not in ("overhead", "gradients", "peers", "memory", "xplique", "compiling")
}


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError(f"{field} not in /proc/self/status")


def _try_reset_rss() -> bool:
    """Linux ≥ 4.0 resets the peak RSS (VmHWM) when "5" is written to ``clear_refs``."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status("VmHWM")
        return True
    except OSError:
        return False


_CAN_RESET_RSS = _try_reset_rss()


def _reset_peak_rss() -> int:
    """Start a fresh peak; returns the current RSS (bytes).

    ``ru_maxrss`` never goes down, so a transient peak earlier in the process (importing a
    framework, building the model) would hide the call's own peak: where Linux allows it the
    high-water mark is reset instead, and the ``ru_maxrss`` fallback is only a lower bound.
    """
    if _CAN_RESET_RSS:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status("VmRSS")
    return _maxrss_bytes()


def _peak_rss() -> int:
    return _proc_status("VmHWM") if _CAN_RESET_RSS else _maxrss_bytes()


def _reset_gpu_peak(framework: str) -> int:
    if framework == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("GPU:0")
    return tf.config.experimental.get_memory_info("GPU:0")["current"]


def _gpu_peak(framework: str) -> int:
    if framework == "torch":
        import torch

        return torch.cuda.max_memory_allocated()
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("GPU:0")["peak"]



def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One memory setting, measured in this (fresh) process (see :mod:`benchmarks.harness`).

    The level subtracted is the one reached after building the model and one warm-up pass of
    a single input through the method's own adapter (allocator pools, oneDNN primitives,
    TensorFlow's trace). What is left is what the call needs: its chunks of perturbed inputs,
    the model's activations for them, masks and accumulators. ``spec["value"] is None``
    measures a bare forward pass of ``batch_size`` inputs instead: the floor of any method.
    """
    cfg = Config(**{k: v for k, v in spec["config"].items() if k in _SCALAR_FIELDS})
    case = MemoryCase(**spec["case"])
    value = spec["value"]
    setup_framework(cfg.framework, cfg.threads)
    bench = Workbench(cfg, n_images=case.n_images)
    cls, note = resolve(case)
    if cls is None:
        return {"status": "skipped", "note": note}
    params = dict(case.params) if value is None else {**case.params, case.param: value}
    obj, notes = make(cls, bench, params, cfg.batch_size)
    cuda = cfg.device == "cuda"
    adapter = obj.adapter
    with bench.context():
        adapter.forward(adapter.to_model(bench.bare.rows(1)))
        bench.sync()
        before = _reset_gpu_peak(cfg.framework) if cuda else _reset_peak_rss()
        with counting(obj, cfg.framework) as calls:
            if value is None:
                adapter.forward(adapter.to_model(bench.bare.rows(cfg.batch_size)))
            else:
                obj(bench.x, bench.labels)
        bench.sync()
        after = _gpu_peak(cfg.framework) if cuda else _peak_rss()
    if cuda:
        measure = "torch.cuda.max_memory_allocated" if cfg.framework == "torch" else "TF GPU peak"
    else:
        measure = "peak RSS (VmHWM, reset before the call)" if _CAN_RESET_RSS else "ru_maxrss"
    return {
        "status": "ok",
        "value": value,
        "measure": measure,
        "baseline_mb": before / 2**20,
        "peak_mb": after / 2**20,
        "increase_mb": max(0, after - before) / 2**20,
        "passes": summarize_calls(calls),
        "notes": notes,
    }



def _memory_setting(case: MemoryCase, cfg: Config, value: int | None, allocator: str = "fixed") -> dict[str, Any]:
    spec = {"config": cfg.public(), "case": dataclasses.asdict(case), "value": value}
    if not cfg.isolate_memory:
        return {**memory_child(spec), "allocator": "in-process"}
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if allocator == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--memory-child", json.dumps(spec)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900, env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "error", "note": " | ".join(tail)}
    return {**json.loads(lines[-1]), "allocator": allocator}


def _growth(small: dict[str, Any], large: dict[str, Any]) -> float:
    # A 1 MiB floor keeps allocator noise on tiny numbers from posing as growth.
    return max(large["increase_mb"], 1.0) / max(small["increase_mb"], 1.0)


def run_memory_case(case: MemoryCase, cfg: Config) -> dict[str, Any]:
    """Both settings of ``case`` and a bare forward pass for reference, each in a fresh process.

    Measured with glibc's mmap threshold fixed at 1 MiB (the RSS then follows live memory) and,
    unless ``cfg.quick``, once more with the default allocator settings for comparison.
    """
    row: dict[str, Any] = {"name": case.name, "param": case.param, "values": list(case.values)}
    settings = []
    for value in (None, *case.values):
        result = _memory_setting(case, cfg, value)
        if result["status"] != "ok":
            return {**row, **result}
        settings.append(result)
    bare, small, large = settings
    row.update(
        status="ok",
        measure=small["measure"],
        allocator=small["allocator"],
        bare_forward=bare,
        settings=[small, large],
        # Growth of the call's memory (above the warm-up level) when its work grows 8×.
        growth=_growth(small, large),
        work_ratio=large["passes"]["inputs"] / max(1, small["passes"]["inputs"]),
    )
    if cfg.isolate_memory and not cfg.quick:
        default = [_memory_setting(case, cfg, value, "default") for value in case.values]
        if all(d["status"] == "ok" for d in default):
            row["default_allocator"] = {"settings": default, "growth": _growth(*default)}
    # What materialising every perturbed input at once would take, for scale.
    row["unstreamed_inputs_mb"] = large["passes"]["inputs"] * 3 * cfg.size**2 * 4 / 2**20
    return row
