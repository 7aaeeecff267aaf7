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
    >>> from benchmarks.harness import default_config, run
    >>> results = run(default_config("torch", "cpu", quick=True, out="bench-out"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TARGET_OVERHEAD = 1.15
TARGET_PEER = 1.0
TARGET_MEMORY = 1.2


# -- configuration ----------------------------------------------------------------------------
@dataclass
class Case:
    """One method or metric of the overhead table.

    ``params`` keys may list alternative spellings, ``"nb_samples|nb_masks"``: the first one
    the class accepts is used (plugins are written concurrently with this harness).
    """

    name: str
    kind: str = "method"  # "method" | "metric"
    params: dict[str, Any] = field(default_factory=dict)
    cls: type | None = None  # an explicit class instead of the registry entry (tests)


@dataclass
class PeerCase:
    """One of our methods against a Captum attribution with identical settings."""

    name: str
    params: dict[str, Any]
    captum: str  # "saliency" | "integrated_gradients" | "occlusion" | "smoothgrad"


@dataclass
class MemoryCase:
    """Peak memory of ``name`` as ``param`` goes from ``values[0]`` to ``values[1]``."""

    name: str
    param: str
    values: tuple[int, int]
    params: dict[str, Any] = field(default_factory=dict)
    n_images: int = 1


@dataclass
class Config:
    framework: str
    device: str = "cpu"
    quick: bool = False
    out: str = "bench-out"
    size: int = 112
    width: int = 32
    classes: int = 10
    n_images: int = 4
    batch_size: int = 64
    warmup: int = 1
    repeats: int = 3
    #: Calls that take less than this get more repeats (up to ``max_repeats``): cheap calls are noisy.
    short_call_s: float = 0.25
    max_repeats: int = 21
    #: Intra-op threads; ``None`` leaves the framework's setting alone (inside a test run).
    threads: int | None = 2
    seed: int = 0
    #: ``"resnet"`` (the benchmark model, :mod:`benchmarks.models`) or ``"cnn"`` (the tiny test
    #: CNN of :mod:`xai_toolbox.testing`, for smoke tests).
    model: str = "resnet"
    overhead: list[Case] = field(default_factory=list)
    gradients: list[Case] = field(default_factory=list)
    peers: list[PeerCase] = field(default_factory=list)
    peer_images: int = 8
    memory: list[MemoryCase] = field(default_factory=list)
    #: Forward-only methods/metrics (names from ``overhead``) timed with and without
    #: ``xt.autocast()`` (PyTorch only).
    precision: list[str] = field(default_factory=list)
    #: Run each memory setting in a fresh subprocess (the only meaningful way for RSS).
    isolate_memory: bool = True

    def public(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("overhead", "gradients", "peers", "memory"):
            for item in d[key]:
                item.pop("cls", None)
        return d


def default_config(framework: str, device: str = "cpu", *, quick: bool = False, out: str = "bench-out") -> Config:
    """The settings of ``python -m benchmarks`` (``quick``: a smaller workload, same protocol)."""
    if quick:
        n, rise, sobol_design, hsic, steps, mu = 2, 128, 2, 128, 64, 128
        ig_steps, sg_samples = 32, 32
        memory = [
            MemoryCase("rise", "nb_samples", (128, 1024), {"grid_size": 7, "seed": 0}),
            MemoryCase("sobol", "nb_design", (2, 16), {"grid_size": 8, "seed": 0}),
        ]
        peer_images = 4
    else:
        n, rise, sobol_design, hsic, steps, mu = 4, 512, 8, 512, 128, 256
        ig_steps, sg_samples = 64, 64
        memory = [
            MemoryCase("rise", "nb_samples", (256, 2048), {"grid_size": 7, "seed": 0}),
            MemoryCase("sobol", "nb_design", (4, 32), {"grid_size": 8, "seed": 0}),
        ]
        peer_images = 8
    overhead = [
        Case("rise", params={"nb_samples|nb_masks": rise, "grid_size": 7, "seed": 0}),
        Case("sobol", params={"grid_size": 8, "nb_design": sobol_design, "seed": 0}),
        Case("hsic", params={"grid_size": 8, "nb_design|nb_samples": hsic, "seed": 0}),
        Case(
            "occlusion",
            params={"patch_size|window|window_size|sliding_window": 16, "stride|patch_stride|strides": 8},
        ),
        Case("deletion", "metric", {"steps": steps}),
        Case("insertion", "metric", {"steps": steps}),
        Case("mufidelity", "metric", {"nb_samples": mu, "grid_size": 9, "subset_percent": 0.2, "seed": 0}),
    ]
    gradients = [
        Case("saliency"),
        Case("integrated_gradients", params={"steps": ig_steps, "rule": "gausslegendre"}),
        Case("smoothgrad", params={"nb_samples": sg_samples, "noise": 0.15, "seed": 0}),
    ]
    peers: list[PeerCase] = []
    if framework == "torch":
        peers = [
            PeerCase("saliency", {}, "saliency"),
            PeerCase("integrated_gradients", {"steps": 32, "rule": "gausslegendre"}, "integrated_gradients"),
            PeerCase(
                "occlusion",
                {"patch_size|window|window_size|sliding_window": 16, "stride|patch_stride|strides": 8},
                "occlusion",
            ),
            PeerCase("smoothgrad", {"nb_samples": 16, "noise": 0.15, "seed": 0}, "smoothgrad"),
            # Noise drawn on the device, as Captum does (not the same noise in both frameworks).
            PeerCase(
                "smoothgrad", {"nb_samples": 16, "noise": 0.15, "seed": 0, "noise_source": "device"}, "smoothgrad"
            ),
        ]
    return Config(
        framework=framework,
        device=device,
        quick=quick,
        out=out,
        n_images=n,
        repeats=3 if quick else 5,
        overhead=overhead,
        gradients=gradients,
        peers=peers,
        peer_images=peer_images,
        memory=memory,
        precision=["rise", "occlusion", "deletion"] if framework == "torch" else [],
    )


# -- environment ------------------------------------------------------------------------------
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


# -- the workload -----------------------------------------------------------------------------
class Workbench:
    """Model, inputs and bare baselines for one framework and device."""

    def __init__(self, cfg: Config, n_images: int | None = None) -> None:
        from .models import resnet

        self.cfg = cfg
        self.framework = cfg.framework
        self.device = cfg.device
        n = n_images or cfg.n_images
        rng = np.random.default_rng(cfg.seed)
        self.images = rng.uniform(0.0, 1.0, (n, 3, cfg.size, cfg.size)).astype(np.float32)
        if cfg.model == "cnn":
            from xai_toolbox.testing import cnn

            self.model = cnn(cfg.framework, cfg.seed, size=cfg.size, classes=cfg.classes, width=cfg.width)
        else:
            self.model = resnet(cfg.framework, cfg.seed, size=cfg.size, width=cfg.width, classes=cfg.classes)
        if self.framework == "torch":
            import torch

            self.model = self.model.to(self.device)
            self.x = torch.from_numpy(self.images).to(self.device)
        else:
            import tensorflow as tf

            with self.tf_device():
                self.x = tf.constant(self.images.transpose(0, 2, 3, 1))
        self.bare = BareRunner(self)
        self.labels = self.bare.top1()
        # Explanations for the metrics: random maps (a metric's cost does not depend on them).
        self.maps = self.native(rng.uniform(0.0, 1.0, (n, cfg.size, cfg.size)).astype(np.float32))

    def tf_device(self) -> Any:
        import tensorflow as tf

        return tf.device("/GPU:0" if self.device == "cuda" else "/CPU:0")

    def native(self, a: np.ndarray) -> Any:
        if self.framework == "torch":
            import torch

            return torch.from_numpy(a).to(self.device)
        import tensorflow as tf

        with self.tf_device():
            return tf.constant(a)

    def sync(self) -> None:
        """Wait for queued device work, so a timer measures the work and not its launch."""
        if self.framework == "torch" and self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        # TensorFlow eager ops return when done on CPU; on GPU the fetch of the last result syncs.

    def context(self) -> Any:
        return self.tf_device() if self.framework == "tf" else contextlib.nullcontext()


class BareRunner:
    """The baseline: a plain loop of model calls at recorded batch sizes, nothing else."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.framework = bench.framework
        self._x_cache: dict[int, Any] = {}
        if self.framework == "tf":
            import tensorflow as tf

            model = bench.model
            spec = tf.TensorSpec((None, *bench.x.shape[1:]), tf.float32)

            def forward(z: Any) -> Any:
                return model(z, training=False)

            def gradient(z: Any) -> Any:  # forward and backward in one graph, as users write it
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(z)
                    score = tf.reduce_sum(model(z, training=False)[:, 0])
                return tape.gradient(score, z)

            self._forward = tf.function(forward, input_signature=[spec], autograph=False)
            self._gradient = tf.function(gradient, input_signature=[spec], autograph=False)

    def rows(self, b: int) -> Any:
        """``b`` model inputs: the benchmark images repeated (so a chunk is real image data)."""
        if b not in self._x_cache:
            n = self.bench.x.shape[0]
            idx = np.arange(b) % n
            if self.framework == "torch":
                import torch

                self._x_cache[b] = self.bench.x[torch.from_numpy(idx).to(self.bench.x.device)]
            else:
                import tensorflow as tf

                with self.bench.tf_device():
                    self._x_cache[b] = tf.gather(self.bench.x, idx)
        return self._x_cache[b]

    def top1(self) -> np.ndarray:
        if self.framework == "torch":
            import torch

            with torch.no_grad():
                return self.bench.model(self.bench.x).argmax(1).cpu().numpy().astype(np.int64)
        with self.bench.tf_device():
            return np.asarray(self._forward(self.bench.x)).argmax(1).astype(np.int64)

    def prepare(self, calls: list[tuple[str, int]], inputs: list[Any] | None = None) -> Callable[[], None]:
        """A function replaying ``calls`` (``(kind, batch)``) bare, inputs built beforehand.

        ``inputs``: the very batches the method fed the model (as :func:`counting` captured
        them), so that data-dependent kernel speed — a deleted image is mostly zeros — is not
        counted as overhead either way; else the benchmark images, repeated.
        """
        if inputs is not None and len(inputs) == len(calls):
            batches = [(kind, xb) for (kind, _), xb in zip(calls, inputs, strict=True)]
        else:
            batches = [(kind, self.rows(b)) for kind, b in calls]
        if self.framework == "torch":
            import torch

            model = self.bench.model
            onehots = {}
            for kind, xb in batches:
                if kind != "forward" and xb.shape[0] not in onehots:
                    onehots[xb.shape[0]] = torch.ones(xb.shape[0], device=xb.device)

            def replay() -> None:
                for kind, xb in batches:
                    if kind == "forward":
                        with torch.no_grad():
                            model(xb)
                    else:  # one forward+backward: the gradient of one logit per input
                        leaf = xb.detach().requires_grad_(True)
                        out = model(leaf)
                        torch.autograd.grad((out[:, 0] * onehots[xb.shape[0]]).sum(), leaf)
                self.bench.sync()

            return replay

        forward, gradient = self._forward, self._gradient

        def replay_tf() -> None:
            last = None
            with self.bench.tf_device():
                for kind, xb in batches:
                    last = forward(xb) if kind == "forward" else gradient(xb)
            if last is not None and self.bench.device == "cuda":
                last.numpy()

        return replay_tf


# -- counting forward passes ------------------------------------------------------------------
@contextlib.contextmanager
def counting(
    obj: Any, framework: str, inputs: list[Any] | None = None
) -> Iterator[list[tuple[str, int]]]:
    """Record every model pass of ``obj`` (a method or metric) as ``(kind, batch size)``.

    ``kind`` is ``"forward"`` (no gradient) or ``"gradient"`` (forward + backward). PyTorch: a
    forward pre-hook on the model sees every call, whatever route it takes. Keras: the model
    runs inside the adapter's compiled function, so the adapter's entry points are wrapped.
    With ``inputs``, a copy of each pass's input batch is appended to it, in the same order.
    """
    calls: list[tuple[str, int]] = []
    adapter = obj.adapter
    if framework == "torch":
        import torch

        def hook(_module: Any, args: Any) -> None:
            calls.append(("gradient" if torch.is_grad_enabled() else "forward", int(args[0].shape[0])))
            if inputs is not None:
                inputs.append(args[0].detach().clone())

        handle = adapter.model.register_forward_pre_hook(hook)
        try:
            yield calls
        finally:
            handle.remove()
        return

    originals = {}

    def wrap(attr: str, kind: str, batch_of: Callable[..., int]) -> None:
        original = getattr(adapter, attr)
        originals[attr] = attr in vars(adapter)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            k = kind
            if attr == "layer_activations":
                score_of = args[2] if len(args) > 2 else kwargs.get("score_of")
                k = "gradient" if score_of is not None else "forward"
            calls.append((k, batch_of(*args, **kwargs)))
            if inputs is not None:
                inputs.append(args[0].raw)  # TensorFlow tensors are immutable: no copy needed
            return original(*args, **kwargs)

        setattr(adapter, attr, wrapped)

    wrap("forward", "forward", lambda x: int(x.shape[0]))
    wrap("differentiable_forward", "gradient", lambda x: int(x.shape[0]))
    wrap("weighted_value_and_grad", "gradient", lambda x, *a, **k: int(x.shape[0]))
    wrap("weighted_layer_activations", "gradient", lambda x, *a, **k: int(x.shape[0]))
    wrap("layer_activations", "gradient", lambda x, *a, **k: int(x.shape[0]))
    try:
        yield calls
    finally:
        for attr, had_own in originals.items():
            if not had_own:
                delattr(adapter, attr)


def summarize_calls(calls: list[tuple[str, int]]) -> dict[str, Any]:
    """Counts of passes and inputs by kind, and the distinct batch sizes."""
    out: dict[str, Any] = {"passes": len(calls), "inputs": int(sum(b for _, b in calls))}
    for kind in ("forward", "gradient"):
        sizes = [b for k, b in calls if k == kind]
        if sizes:
            out[kind] = {"passes": len(sizes), "inputs": int(sum(sizes))}
    sizes = {}
    for _, b in calls:
        sizes[b] = sizes.get(b, 0) + 1
    out["batch_sizes"] = {str(b): c for b, c in sorted(sizes.items(), reverse=True)}
    return out


# -- timing -----------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def paired(
    ours: Callable[[], Any], reference: Callable[[], Any], sync: Callable[[], None], cfg: Config, first_s: float
) -> dict[str, Any]:
    """Interleaved timed repeats of ``ours`` and ``reference``; medians and the paired ratio."""
    repeats = cfg.repeats
    if first_s < cfg.short_call_s:
        repeats = max(repeats, cfg.max_repeats)
    t_ours, t_ref = [], []
    for r in range(repeats):
        if r % 2 == 0:
            t_ours.append(timed(ours, sync))
            t_ref.append(timed(reference, sync))
        else:
            t_ref.append(timed(reference, sync))
            t_ours.append(timed(ours, sync))
    ratios = [a / b for a, b in zip(t_ours, t_ref, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "repeats": repeats,
        "times_s": t_ours,
        "reference_times_s": t_ref,
        "median_s": statistics.median(t_ours),
        "reference_median_s": statistics.median(t_ref),
        "ratio": statistics.median(ratios),
        # How much the paired ratio moves between repeats: the noise a difference must beat.
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "ratio_of_medians": statistics.median(t_ours) / statistics.median(t_ref),
    }


# -- building methods and metrics by name -----------------------------------------------------
def resolve(case: Case | PeerCase | MemoryCase, kind: str = "method") -> tuple[type | None, str]:
    """The class for a case, or ``None`` and a note saying why it is skipped."""
    cls = getattr(case, "cls", None)
    if cls is not None:
        return cls, ""
    from xai_toolbox.registry import get_registry

    registry = get_registry()
    table = registry.methods if kind == "method" else registry.metrics
    entry = table.get(case.name)
    if entry is None:
        return None, f"{kind} {case.name!r} is not registered (yet); skipped"
    return entry.cls, ""


def build_params(cls: type, params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map ``"a|b"`` alternative keys onto the names ``cls`` accepts; note the ones it does not."""
    accepted = set(cls._param_names()) if hasattr(cls, "_param_names") else set()
    out, notes = {}, []
    for key, value in params.items():
        names = key.split("|")
        chosen = next((n for n in names if n in accepted), None)
        if chosen is None:
            notes.append(f"{cls.__name__} takes none of {names}; left at its default")
            continue
        out[chosen] = value
    return out, notes


def make(cls: type, bench: Workbench, params: dict[str, Any], batch_size: int) -> tuple[Any, list[str]]:
    kwargs, notes = build_params(cls, params)
    kwargs = {"batch_size": batch_size, "progress": False, **kwargs}
    return cls(bench.model, **kwargs), notes


def _traces(obj: Any) -> int | None:
    return getattr(obj.adapter, "traces", None)


# -- section a: overhead ----------------------------------------------------------------------
def run_overhead_case(case: Case, bench: Workbench, cfg: Config, reference: str) -> dict[str, Any]:
    """Time one method/metric against the same passes run bare (``reference``: what they are)."""
    row: dict[str, Any] = {"name": case.name, "kind": case.kind, "reference": reference}
    cls, note = resolve(case, case.kind)
    if cls is None:
        return {**row, "status": "skipped", "note": note}
    try:
        obj, notes = make(cls, bench, case.params, cfg.batch_size)
    except Exception as exc:  # a plugin under construction: report, do not abort the run
        return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
    row["params"] = {k: v for k, v in obj.get_params().items() if k not in ("score_fn", "progress", "framework")}
    row["notes"] = notes
    if case.kind == "metric":
        def call() -> Any:
            return obj(bench.x, bench.labels, bench.maps)
    else:
        def call() -> Any:
            return obj(bench.x, bench.labels)

    with bench.context():
        try:
            first = timed(call, bench.sync)
            traces_after_first = _traces(obj)
            for _ in range(cfg.warmup - 1):
                call()
            # The passes are counted on a steady-state call: a first call may do one-off work
            # (e.g. probing the output width of the model, which is remembered afterwards).
            seen: list[Any] = []
            with counting(obj, bench.framework, seen) as calls:
                call()
        except Exception as exc:
            return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
        replay = bench.bare.prepare(calls, seen)
        del seen
        replay()  # the baseline's own warm-up (its tf.function traces here)
        timing = paired(call, replay, bench.sync, cfg, first)
    row.update(status="ok", passes=summarize_calls(calls), first_call_s=first, **timing)
    row["first_call_extra_s"] = first - timing["median_s"]
    if traces_after_first is not None:
        row["traces_after_first_call"] = traces_after_first
        row["traces_after_all_calls"] = _traces(obj)
    return row


# -- section b: peers (Captum) ----------------------------------------------------------------
def run_peer_case(case: PeerCase, bench: Workbench, cfg: Config) -> dict[str, Any]:
    row: dict[str, Any] = {"name": case.name, "peer": f"captum.{case.captum}"}
    try:
        import captum.attr as ca
        import torch
    except ImportError as exc:
        return {**row, "status": "skipped", "note": f"captum not installed ({exc})"}
    cls, note = resolve(case)
    if cls is None:
        return {**row, "status": "skipped", "note": note}
    obj, notes = make(cls, bench, case.params, cfg.batch_size)
    params = obj.get_params()
    row["params"] = {k: v for k, v in params.items() if k not in ("score_fn", "progress", "framework")}
    row["notes"] = notes
    x, model, b = bench.x, bench.model, cfg.batch_size
    n = x.shape[0]
    target = torch.from_numpy(bench.labels).to(x.device)
    per_eval = max(1, b // n)  # Captum's "per example" batching: n inputs × per_eval = batch_size

    if case.captum == "saliency":
        peer = ca.Saliency(model)
        row["captum_settings"] = {"abs": True}

        def theirs() -> Any:
            return peer.attribute(x, target=target, abs=True).amax(1)
    elif case.captum == "integrated_gradients":
        peer = ca.IntegratedGradients(model)
        method = {"gausslegendre": "gausslegendre", "trapezoid": "riemann_trapezoid",
                  "riemann_middle": "riemann_middle"}[params["rule"]]
        row["captum_settings"] = {"n_steps": params["steps"], "method": method, "internal_batch_size": b}

        def theirs() -> Any:
            return peer.attribute(
                x, baselines=0.0, target=target, n_steps=params["steps"], method=method, internal_batch_size=b
            ).sum(1)
    elif case.captum == "occlusion":
        window = _first_param(params, "patch_size", "window", "window_size", "sliding_window")
        stride = _first_param(params, "stride", "patch_stride", "strides")
        if window is None or stride is None:
            return {**row, "status": "skipped", "note": f"cannot read window/stride from {params}"}
        window = _pair(window)
        stride = _pair(stride)
        peer = ca.Occlusion(model)
        c = x.shape[1]
        row["captum_settings"] = {
            "sliding_window_shapes": (c, *window), "strides": (c, *stride), "baselines": 0.0,
            "perturbations_per_eval": per_eval,
        }

        def theirs() -> Any:
            return peer.attribute(
                x, sliding_window_shapes=(c, *window), strides=(c, *stride), baselines=0.0,
                target=target, perturbations_per_eval=per_eval,
            ).mean(1)
    elif case.captum == "smoothgrad":
        # Our sigma is noise × (max − min) of each image; the images share a range, so one value.
        flat = bench.images.reshape(n, -1)
        stdev = float(params["noise"] * np.mean(flat.max(1) - flat.min(1)))
        peer = ca.NoiseTunnel(ca.Saliency(model))
        row["captum_settings"] = {
            "nt_type": "smoothgrad", "nt_samples": params["nb_samples"], "stdevs": stdev,
            "nt_samples_batch_size": per_eval, "abs": True,
        }

        def theirs() -> Any:
            return peer.attribute(
                x, nt_type="smoothgrad", nt_samples=params["nb_samples"], stdevs=stdev,
                nt_samples_batch_size=per_eval, target=target, abs=True,
            ).amax(1)
    else:
        raise ValueError(f"unknown Captum peer {case.captum!r}")

    def ours() -> Any:
        return obj(x, bench.labels)

    try:
        first = timed(ours, bench.sync)
        ours_map = _np(ours())
        their_map = _np(theirs())
    except Exception as exc:
        return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
    timing = paired(ours, theirs, bench.sync, cfg, first)
    row.update(status="ok", first_call_s=first, **timing)
    row["agreement"] = _correlation(ours_map, their_map)
    return row


def _first_param(params: dict[str, Any], *names: str) -> Any:
    return next((params[n] for n in names if n in params), None)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _np(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two stacks of maps (a check that the settings really match)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# -- section e: mixed precision (PyTorch) -------------------------------------------------------
def run_precision_case(case: Case, bench: Workbench, cfg: Config) -> dict[str, Any]:
    """One forward-only method or metric in float32 and under ``xt.autocast()``, interleaved."""
    import xai_toolbox as xt

    row: dict[str, Any] = {"name": case.name, "kind": case.kind}
    cls, note = resolve(case, case.kind)
    if cls is None:
        return {**row, "status": "skipped", "note": note}
    obj, notes = make(cls, bench, case.params, cfg.batch_size)
    row["params"] = {k: v for k, v in obj.get_params().items() if k not in ("score_fn", "progress", "framework")}
    row["notes"] = notes

    def plain() -> Any:
        if case.kind == "metric":
            return obj(bench.x, bench.labels, bench.maps).curves
        return obj(bench.x, bench.labels)

    def mixed() -> Any:
        with xt.autocast():
            return plain()

    try:
        first = timed(plain, bench.sync)
        timed(mixed, bench.sync)  # warm-up of the reduced-precision kernels
        a, b = _np(plain()), _np(mixed())
    except Exception as exc:
        return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
    timing = paired(mixed, plain, bench.sync, cfg, first)
    row.update(status="ok", **timing)
    row["speedup"] = 1.0 / timing["ratio"]
    row["agreement"] = _correlation(a, b)
    return row


# -- section c: memory ------------------------------------------------------------------------
def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One memory setting, measured in this (fresh) process. See the module docs.

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


#: glibc returns blocks of at least this size to the system as soon as they are freed, so the
#: RSS follows the live tensors; its default threshold adapts upwards after the first large
#: free, after which freed chunk buffers are kept in the heap (bounded, but it blurs growth).
MMAP_THRESHOLD = 1 << 20


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


_SCALAR_FIELDS = {
    f.name for f in dataclasses.fields(Config) if f.name not in ("overhead", "gradients", "peers", "memory")
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


# -- the run ----------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    cfg: Config, sections: tuple[str, ...] = ("overhead", "gradients", "peers", "precision", "memory")
) -> dict[str, Any]:
    """Run the benchmark, write ``bench-<framework>-<device>.json`` and ``.md`` into ``cfg.out``."""
    setup_framework(cfg.framework, cfg.threads)
    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(cfg.framework, cfg.device), "config": cfg.public()}
    results["environment"]["load_average_start"] = _loadavg()
    cpu_start = _cpu_times()
    bench = Workbench(cfg)
    results["model"] = _model_info(cfg, bench)
    if "overhead" in sections:
        results["overhead"] = []
        for case in cfg.overhead:
            log(f"[overhead] {case.name} ...")
            row = run_overhead_case(case, bench, cfg, "bare forward passes")
            _log_row(row)
            results["overhead"].append(row)
    if "gradients" in sections:
        results["gradients"] = []
        for case in cfg.gradients:
            log(f"[gradients] {case.name} ...")
            row = run_overhead_case(case, bench, cfg, "bare forward+backward passes")
            _log_row(row)
            results["gradients"].append(row)
    if "peers" in sections and cfg.peers:
        results["peers"] = []
        peer_bench = Workbench(cfg, n_images=cfg.peer_images)
        for peer in cfg.peers:
            log(f"[peers] {peer.name} vs captum.{peer.captum} ...")
            row = run_peer_case(peer, peer_bench, cfg)
            _log_row(row)
            results["peers"].append(row)
    if "precision" in sections and cfg.precision:
        results["precision"] = []
        for case in (c for c in cfg.overhead if c.name in cfg.precision):
            log(f"[precision] {case.name} float32 vs autocast ...")
            row = run_precision_case(case, bench, cfg)
            _log_row(row)
            results["precision"].append(row)
    if "memory" in sections:
        results["memory"] = []
        for mem in cfg.memory:
            log(f"[memory] {mem.name} {mem.param}={mem.values} ...")
            row = run_memory_case(mem, cfg)
            _log_row(row)
            results["memory"].append(row)
    results["wall_s"] = time.perf_counter() - started
    results["environment"]["load_average_end"] = _loadavg()
    results["environment"]["cpu_steal_share"] = _steal_share(cpu_start, _cpu_times())
    write(results, Path(cfg.out))
    return results


def _cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``: user … steal), ``None`` off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def _steal_share(start: list[int] | None, end: list[int] | None) -> float | None:
    """Share of the CPU time the hypervisor gave to other machines between two readings: on a
    virtual machine with busy neighbours this is what makes timings drift."""
    if start is None or end is None or len(start) < 8 or len(end) < 8:
        return None
    total = sum(end) - sum(start)
    return (end[7] - start[7]) / total if total > 0 else None


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: a benchmark on a busy machine should say so."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _model_info(cfg: Config, bench: Workbench) -> dict[str, Any]:
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


def _log_row(row: dict[str, Any]) -> None:
    if row.get("status") != "ok":
        log(f"    {row.get('status')}: {row.get('note')}")
    elif "ratio" in row:
        log(f"    median {row['median_s']:.3f}s vs {row['reference_median_s']:.3f}s  ratio {row['ratio']:.3f}")
    elif "growth" in row:
        log(f"    growth {row['growth']:.2f}x  ({[round(s['increase_mb'], 1) for s in row['settings']]} MiB)")


# -- output -----------------------------------------------------------------------------------
def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    env = results["environment"]
    stem = f"bench-{env['framework']}-{env['device']}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown(results))
    log(f"wrote {json_path} and {md_path}")
    return json_path, md_path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple | set):
        return list(o)
    return repr(o)


def _fmt_params(params: dict[str, Any] | None) -> str:
    if not params:
        return ""
    skip = {"batch_size", "seed"}
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in skip and not isinstance(v, dict | list))


def _threads(n: Any) -> str:
    return f"{n} intra-op thread{'' if n == 1 else 's'}"


def _load1(env: dict[str, Any], key: str) -> str:
    load = env.get(key)
    return "?" if not load else f"{load[0]:.1f}"


def _steal(env: dict[str, Any]) -> str:
    share = env.get("cpu_steal_share")
    return "" if share is None else f"; CPU time stolen by the hypervisor {100 * share:.0f} %"


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(results: dict[str, Any]) -> str:
    env, model = results["environment"], results["model"]
    fw = env["framework"]
    versions = f"torch {env.get('torch')}" if fw == "torch" else f"tensorflow {env.get('tensorflow')} / keras {env.get('keras')}"
    if env.get("captum"):
        versions += f", captum {env['captum']}"
    lines = [
        f"### {'PyTorch' if fw == 'torch' else 'TensorFlow/Keras'} on {env['device'].upper()}",
        "",
        f"{env['cpu']} ({env['cpu_count']} cores, {_threads(env.get('threads'))}), {versions}, "
        f"numpy {env['numpy']}, Python {env['python']}; {model['name']} at "
        f"{model['input'][1]}×{model['input'][2]} ({model['parameters'] / 1e6:.1f} M parameters), "
        f"{model['n_images']} images, batch_size {model['batch_size']}; "
        f"{'quick' if results['config']['quick'] else 'default'} settings; commit {env.get('commit', '?')}; "
        f"total {results.get('wall_s', 0):.0f} s; load average (1 min) "
        f"{_load1(env, 'load_average_start')} at start, {_load1(env, 'load_average_end')} at end"
        f"{_steal(env)}.",
        "",
    ]
    if "overhead" in results:
        lines += _time_table(
            "Overhead over the same forward passes run bare (target ≤ 1.15)", results["overhead"], TARGET_OVERHEAD, fw
        )
    if "gradients" in results:
        lines += _time_table(
            "Gradient methods over the same forward+backward passes run bare (no target; for reading)",
            results["gradients"], None, fw,
        )
    if results.get("peers"):

        def peer_cells(r: dict[str, Any]) -> list[str]:
            agree = "" if r.get("agreement") is None else f"{r['agreement']:.3f}"
            return [f"{r['name']} vs {r['peer']}", _fmt_params(r.get("params")), f"{r['median_s']:.3f}",
                    f"{r['reference_median_s']:.3f}", _ratio(r, 2), agree, _verdict(r["ratio"] <= TARGET_PEER)]

        lines += _table(
            "Against Captum (same model, inputs and settings; target ≤ 1.0)",
            [("method", "---"), ("settings", "---"), ("ours (s)", "---:"), ("Captum (s)", "---:"),
             ("ratio (quartiles)", "---:"), ("agreement (r)", "---:"), ("meets", "---")],
            results["peers"], peer_cells,
        )
    if results.get("precision"):

        def precision_cells(r: dict[str, Any]) -> list[str]:
            agree = "" if r.get("agreement") is None else f"{r['agreement']:.4f}"
            return [r["name"], _fmt_params(r.get("params")), f"{r['reference_median_s']:.3f}",
                    f"{r['median_s']:.3f}", f"{r['speedup']:.2f}×", agree]

        lines += _table(
            "Mixed precision: `xt.autocast()` against float32 (no target; for reading)",
            [("method", "---"), ("settings", "---"), ("float32 (s)", "---:"), ("autocast (s)", "---:"),
             ("speed-up", "---:"), ("agreement (r)", "---:")],
            results["precision"], precision_cells,
        )
    if "memory" in results:

        def memory_cells(r: dict[str, Any]) -> list[str]:
            s0, s1 = r["settings"]
            default = "–"
            if "default_allocator" in r:
                d0, d1 = r["default_allocator"]["settings"]
                default = f"{d0['increase_mb']:.0f} → {d1['increase_mb']:.0f}, {r['default_allocator']['growth']:.2f}"
            return [r["name"], r["param"], f"{s0['value']} → {s1['value']}",
                    f"{s0['passes']['inputs']} → {s1['passes']['inputs']}",
                    f"{s0['increase_mb']:.1f} → {s1['increase_mb']:.1f}", f"{r['bare_forward']['increase_mb']:.1f}",
                    f"{r['growth']:.2f}", default, f"{r['unstreamed_inputs_mb']:.0f}",
                    _verdict(r["growth"] <= TARGET_MEMORY)]

        lines += _table(
            "Peak memory as the work grows 8× (target: growth ≤ 1.2)",
            [("method", "---"), ("parameter", "---"), ("values", "---"), ("model inputs", "---"),
             ("memory above warm-up (MiB)", "---"), ("bare forward of batch_size (MiB)", "---:"),
             ("growth", "---:"), ("default glibc: memory (MiB), growth", "---"),
             ("all inputs at once would need (MiB)", "---:"), ("meets", "---")],
            results["memory"], memory_cells, lead=("name", "param"),
        )[:-1]
        done = [r for r in results["memory"] if r["status"] == "ok"]
        if done:
            how = sorted({f"{r['measure']}" for r in done})
            alloc = sorted({r["allocator"] for r in done})
            note = (f"glibc mmap threshold fixed at {MMAP_THRESHOLD >> 20} MiB (`MALLOC_MMAP_THRESHOLD_`), "
                    "so the RSS follows live memory") if alloc == ["fixed"] else f"allocator: {', '.join(alloc)}"
            lines += ["", f"Measured with {', '.join(how)}, one fresh process per setting; {note}."]
        lines.append("")
    return "\n".join(lines) + "\n"


def _time_table(title: str, rows: list[dict[str, Any]], target: float | None, fw: str) -> list[str]:
    tf = fw == "tf"
    columns = [("method", "---"), ("settings", "---"), ("passes (inputs)", "---:"), ("ours (s)", "---:"),
               ("bare (s)", "---:"), ("ratio (quartiles)", "---:")]
    if tf:
        columns += [("traces", "---:"), ("first call (s)", "---:")]
    if target is not None:
        columns += [("meets", "---")]

    def cells(r: dict[str, Any]) -> list[str]:
        p = r["passes"]
        out = [r["name"], _fmt_params(r.get("params")), f"{p['passes']} ({p['inputs']})",
               f"{r['median_s']:.3f}", f"{r['reference_median_s']:.3f}", _ratio(r, 3)]
        if tf:
            traces = r.get("traces_after_all_calls")
            out += [f"{traces if traces is not None else '–'}", f"{r['first_call_s']:.2f}"]
        if target is not None:
            out.append(_verdict(r["ratio"] <= target))
        return out

    return _table(title, columns, rows, cells)


def _ratio(r: dict[str, Any], digits: int) -> str:
    """The median paired ratio, with its quartiles over the repeats where recorded."""
    text = f"{r['ratio']:.{digits}f}"
    if "ratio_quartiles" in r:
        low, high = r["ratio_quartiles"]
        text += f" ({low:.{digits}f}–{high:.{digits}f})"
    return text


def _table(
    title: str,
    columns: list[tuple[str, str]],
    rows: list[dict[str, Any]],
    cells: Callable[[dict[str, Any]], list[str]],
    lead: tuple[str, ...] = ("name",),
) -> list[str]:
    """A Markdown table under a heading: ``cells(r)`` for each result that ran; for the others
    their ``lead`` fields, then the status and its note, and empty cells."""
    lines = [f"#### {title}", "", "| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join(a for _, a in columns) + "|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append("| " + " | ".join(cells(r)) + " |")
            continue
        shown = [str(r[k]) for k in lead] + [f"{r['status']}: {r.get('note', '')}"]
        lines.append("| " + " | ".join(shown) + " |" + " |" * (len(columns) - len(shown)))
    lines.append("")
    return lines
