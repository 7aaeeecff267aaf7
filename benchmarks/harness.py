"""The benchmark harness: overhead over bare forward passes, peers, memory, TF tracing.

Four measurements, each written to JSON and to a Markdown table by :func:`run`:

* **overhead** — each perturbation method and metric against the *same* forward passes run
  bare (``model(x_chunk)`` under ``no_grad`` for PyTorch, a compiled batch-polymorphic
  ``tf.function`` for Keras) at the same batch sizes, on the same inputs. The passes are counted
  exactly by instrumenting the run (a forward pre-hook on the PyTorch model; wrappers around the
  Keras adapter's entry points), so the baseline repeats the recorded sequence of batch sizes.
  Gradient methods are compared in the same way with bare forward+backward passes.
* **peers** — Captum (PyTorch only) on the same model, inputs and settings.
* **memory** — peak memory of RISE and Sobol as ``nb_samples`` / ``nb_design`` grow 8×, each
  setting in a fresh subprocess: on CPU the peak RSS during the call (Linux ``VmHWM``, reset
  just before the call; ``ru_maxrss`` elsewhere) above the RSS after building the model and a
  one-input warm-up pass; ``torch.cuda.max_memory_allocated`` (or TensorFlow's GPU peak) on
  CUDA. A bare forward pass of ``batch_size`` inputs is measured the same way, as the floor.
* **tracing** (TensorFlow) — the model's ``traces`` counter after a multi-chunk run (one
  trace per input shape and compiled path) and the first-call cost (tracing included)
  separately from the steady-state median.

Timing protocol: one (or more) warm-up call, then ``repeats`` timed calls of the method
interleaved with timed calls of its bare baseline (alternating which goes first), and the
median of the paired ratios with their quartiles. Pairing cancels slow drifts of a shared
machine; the quartiles show the noise that is left.

Example:
    >>> from benchmarks.config import default_config
    >>> from benchmarks.harness import run
    >>> results = run(default_config("torch", "cpu", quick=True, out="bench-out"))

Modules: :mod:`~benchmarks.config` (cases, settings, targets), :mod:`~benchmarks.machine`
(environment readings), :mod:`~benchmarks.workbench` (model, inputs, bare baseline, pass
counting), :mod:`~benchmarks.building` (methods by name), :mod:`~benchmarks.timing`,
:mod:`~benchmarks.runners` (overhead, peers, precision), :mod:`~benchmarks.memory` and
:mod:`~benchmarks.report` (JSON and Markdown).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .compiling import run_compile
from .config import Config
from .machine import cpu_times, environment, loadavg, model_info, setup_framework, steal_share
from .memory import run_memory_case
from .quality import run_quality
from .report import log, log_row, write
from .runners import NAIVE, run_overhead_case, run_peer_case, run_precision_case
from .workbench import Workbench
from .xplique import run_xplique


def run(
    cfg: Config, sections: tuple[str, ...] = ("overhead", "naive", "gradients", "peers", "precision", "memory")
) -> dict[str, Any]:
    """Run the benchmark, write ``bench-<framework>-<device>.json`` and ``.md`` into ``cfg.out``."""
    setup_framework(cfg.framework, cfg.threads)
    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(cfg.framework, cfg.device), "config": cfg.public()}
    results["environment"]["load_average_start"] = loadavg()
    cpu_start = cpu_times()
    bench = Workbench(cfg)
    results["model"] = model_info(cfg, bench)
    # The sections that time a method against the same passes run another way: (section,
    # results key, cases, what the passes are compared with, ours compiled).
    timed_sections = (
        ("overhead", "overhead", cfg.overhead, "bare forward passes", False),
        ("naive", "naive", cfg.overhead, NAIVE, False),
        ("naive-compiled", "naive_compiled", cfg.overhead, NAIVE, True),
        ("gradients", "gradients", cfg.gradients, "bare forward+backward passes", False),
    )
    for section, key, cases, reference, compiled in timed_sections:
        if section not in sections:
            continue
        results[key] = []
        for case in cases:
            log(f"[{section}] {case.name} ...")
            row = run_overhead_case(case, bench, cfg, reference, compiled=compiled)
            log_row(row)
            results[key].append(row)
    if "peers" in sections and cfg.peers:
        results["peers"] = []
        peer_bench = Workbench(cfg, n_images=cfg.peer_images)
        for peer in cfg.peers:
            log(f"[peers] {peer.name} vs captum.{peer.captum} ...")
            row = run_peer_case(peer, peer_bench, cfg)
            log_row(row)
            results["peers"].append(row)
    if "xplique" in sections:
        log("[xplique] side by side ...")
        results["xplique"] = run_xplique(cfg)
    if "quality" in sections:
        results["quality"] = run_quality(cfg)
    if "compile" in sections:
        results["compile"] = run_compile(cfg)
    if "precision" in sections and cfg.precision:
        results["precision"] = []
        for case in (c for c in cfg.overhead if c.name in cfg.precision):
            log(f"[precision] {case.name} float32 vs autocast ...")
            row = run_precision_case(case, bench, cfg)
            log_row(row)
            results["precision"].append(row)
    if "memory" in sections:
        results["memory"] = []
        for mem in cfg.memory:
            log(f"[memory] {mem.name} {mem.param}={mem.values} ...")
            row = run_memory_case(mem, cfg)
            log_row(row)
            results["memory"].append(row)
    results["wall_s"] = time.perf_counter() - started
    results["environment"]["load_average_end"] = loadavg()
    results["environment"]["cpu_steal_share"] = steal_share(cpu_start, cpu_times())
    write(results, Path(cfg.out))
    return results
