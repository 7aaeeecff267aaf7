"""The timed sections, one case at a time: overhead, Captum peers and mixed precision.

Each runner returns one result row (a dict): ``status`` ``"ok"`` with the timings, or
``"skipped"`` / ``"error"`` with a ``note``, so that one failing case never aborts a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import xai_toolbox as xt

from .building import make, resolve
from .config import Case, Config, PeerCase
from .timing import paired, timed
from .workbench import Workbench, counting, summarize_calls


def _traces(obj: Any) -> int | None:
    return getattr(obj.adapter, "traces", None)


#: The reference of the ``naive`` section: the same passes, the model as a user calls it.
NAIVE = "naive forward passes (the model as given: PyTorch contiguous NCHW, Keras eager)"


# -- section a: overhead ----------------------------------------------------------------------
def run_overhead_case(
    case: Case, bench: Workbench, cfg: Config, reference: str, *, compiled: bool = False
) -> dict[str, Any]:
    """Time one method/metric against the same passes run bare (``reference``: what they are;
    :data:`NAIVE`: run as a user would run them without the toolbox). ``compiled``: ours on
    ``xt.adapt(model, compile=True)`` (its first call, compilation included, is reported apart)."""
    row: dict[str, Any] = {"name": case.name, "kind": case.kind, "reference": reference, "compiled": compiled}
    cls, note = resolve(case, case.kind)
    if cls is None:
        return {**row, "status": "skipped", "note": note}
    # Against the naive passes, PyTorch runs with the measured layout (the default "auto" runs
    # the model as given on a CPU: the same layout as the naive passes).
    # (A compiled run makes no layout trial: its eager twin below runs the model as given.)
    measure = reference == NAIVE and bench.framework == "torch" and not compiled
    model = xt.adapt(bench.model, memory_format="measure") if measure else None
    try:
        obj, notes = make(cls, bench, case.params, cfg.batch_size, model)
        # A compiled model is not counted through (a hook on it would be traced into its
        # graph): the eager twin of the call makes the same passes and is counted instead.
        counted = obj
        if compiled:
            obj, _ = make(cls, bench, case.params, cfg.batch_size, xt.adapt(bench.model, compile=True))
    except Exception as exc:  # a plugin under construction: report, do not abort the run
        return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
    row["params"] = {k: v for k, v in obj.get_params().items() if k not in ("score_fn", "progress", "framework")}
    row["notes"] = notes
    if case.kind == "metric":
        def call(o: Any = obj) -> Any:
            return o(bench.x, bench.labels, bench.maps)
    else:
        def call(o: Any = obj) -> Any:
            return o(bench.x, bench.labels)

    with bench.context():
        try:
            first = timed(call, bench.sync)
            traces_after_first = _traces(obj)
            for _ in range(cfg.warmup - 1):
                call()
            # The passes are counted on a steady-state call: a first call may do one-off work
            # (e.g. probing the output width of the model, which is remembered afterwards).
            if counted is not obj:
                call(counted)  # its own one-off work (a probe of the output width) goes first
            seen: list[Any] = []
            with counting(counted, bench.framework, seen) as calls:
                call(counted)
        except Exception as exc:
            return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
        replay = bench.bare.prepare(calls, seen, naive=reference == NAIVE)
        del seen
        replay()  # the baseline's own warm-up (its tf.function traces here)
        timing = paired(call, replay, bench.sync, cfg, first)
    row.update(status="ok", passes=summarize_calls(calls), first_call_s=first, **timing)
    row["images_per_s"] = bench.x.shape[0] / timing["median_s"]
    row["speedup"] = 1.0 / timing["ratio"]
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
    elif case.captum in ("guided_backprop", "deconvolution"):
        peer = ca.GuidedBackprop(model) if case.captum == "guided_backprop" else ca.Deconvolution(model)
        row["captum_settings"] = {}

        def theirs() -> Any:
            return peer.attribute(x, target=target).mean(1)  # our reducer="mean"
    elif case.captum == "gradient_shap":
        # Our constant baseline 0.0 is Captum's one-reference distribution of zeros.
        zeros = torch.zeros_like(x[:1])
        peer = ca.GradientShap(model)
        row["captum_settings"] = {"n_samples": params["nb_samples"], "baselines": "zeros (1 reference)", "stdevs": 0.0}

        def theirs() -> Any:
            return peer.attribute(x, baselines=zeros, n_samples=params["nb_samples"], stdevs=0.0, target=target).sum(1)
    elif case.captum in ("vargrad", "smoothgrad_sq"):
        peer = ca.NoiseTunnel(ca.Saliency(model))
        row["captum_settings"] = {
            "nt_type": case.captum, "nt_samples": params["nb_samples"], "stdevs": params["noise"],
            "nt_samples_batch_size": per_eval, "abs": False,
        }

        def theirs() -> Any:
            return peer.attribute(
                x, nt_type=case.captum, nt_samples=params["nb_samples"], stdevs=params["noise"],
                nt_samples_batch_size=per_eval, target=target, abs=False,
            ).mean(1)
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
