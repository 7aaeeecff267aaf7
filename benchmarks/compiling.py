"""Section compile: eager against ``xt.adapt(model, compile=True)`` — when compiling pays.

For each case, the method on the benchmark model as it is and on the compiled adapter
(``torch.compile`` of the forward and gradient passes for PyTorch; XLA ``jit_compile`` of the
compiled passes for Keras), each in a fresh state: the first call (compilation included) is
reported apart from the steady-state median of the paired repeats. A compiled run pays after
``(first-call extra of the compiled run − that of the eager run) ÷ (steady eager − steady
compiled)`` further calls, when the compiled steady state is faster at all.
"""

from __future__ import annotations

from typing import Any

from .building import make, resolve
from .config import Case, CompileCase, Config
from .report import log, log_row
from .timing import paired, timed
from .workbench import Workbench


def run_compile(cfg: Config) -> list[dict[str, Any]]:
    import xai_toolbox as xt

    bench = Workbench(cfg)
    rows = []
    for case in cfg.compiling:
        log(f"[compile] {case.name} eager vs compiled ...")
        row = _run_case(case, bench, cfg, xt)
        log_row(row)
        rows.append(row)
    return rows


def _run_case(case: CompileCase, bench: Workbench, cfg: Config, xt: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"name": case.name, "kind": case.kind}
    cls, note = resolve(Case(case.name, case.kind), case.kind)
    if cls is None:
        return {**row, "status": "skipped", "note": note}
    eager, _ = make(cls, bench, case.params, cfg.batch_size)
    row["params"] = {k: v for k, v in eager.get_params().items() if k not in ("score_fn", "progress", "framework")}
    compiled_model = xt.adapt(bench.model, compile=True)
    compiled = cls(compiled_model, **{**eager.get_params(), "progress": False})

    def call(obj: Any) -> Any:
        with bench.context():
            return obj(bench.x, bench.labels)

    try:
        first_eager = timed(lambda: call(eager), bench.sync)
        first_compiled = timed(lambda: call(compiled), bench.sync)
    except Exception as exc:
        return {**row, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
    timing = paired(lambda: call(compiled), lambda: call(eager), bench.sync, cfg, first_compiled)
    steady_c, steady_e = timing["median_s"], timing["reference_median_s"]
    extra = (first_compiled - steady_c) - (first_eager - steady_e)
    pays_after = extra / (steady_e - steady_c) if steady_e > steady_c else None
    row.update(status="ok", first_call_s=first_compiled, eager_first_call_s=first_eager,
               compile_s=extra, pays_after_calls=pays_after, speedup=1.0 / timing["ratio"], **timing)
    return row
