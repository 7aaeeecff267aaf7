"""Reporting: progress lines on stderr, the JSON results file and its Markdown tables.

:func:`write` saves ``bench-<framework>-<device>.json`` and ``.md``; :func:`markdown` renders
the tables alone (``python -m benchmarks --render FILE.json`` rewrites them).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    MMAP_THRESHOLD,
    TARGET_MEMORY,
    TARGET_NAIVE_SPEEDUP,
    TARGET_OVERHEAD,
    TARGET_PEER,
    TARGET_XPLIQUE,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def log_row(row: dict[str, Any]) -> None:
    if row.get("status") != "ok":
        log(f"    {row.get('status')}: {row.get('note')}")
    elif "ratio" in row:
        log(f"    median {row['median_s']:.3f}s vs {row['reference_median_s']:.3f}s  ratio {row['ratio']:.3f}")
    elif "speedup" in row:
        log(f"    speed-up {row['speedup']:.2f}x")
    elif "growth" in row:
        log(f"    growth {row['growth']:.2f}x  ({[round(s['increase_mb'], 1) for s in row['settings']]} MiB)")


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
    if "naive" in results:
        lines += _naive_table(results["naive"], fw)
    if "naive_compiled" in results:
        lines += _naive_table(results["naive_compiled"], fw, compiled=True)
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
    if "xplique" in results:
        lines += _xplique_table(results["xplique"], fw)
    if results.get("quality"):
        lines += _quality_tables(results["quality"])
    if results.get("compile"):
        lines += _compile_table(results["compile"], fw)
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


def _naive_table(rows: list[dict[str, Any]], fw: str, *, compiled: bool = False) -> list[str]:
    naive = "contiguous (NCHW) batches" if fw == "torch" else "eager `model(x)` calls"
    ours = "ours on `xt.adapt(model, compile=True)`, " if compiled else ""

    def cells(r: dict[str, Any]) -> list[str]:
        p = r["passes"]
        low, high = (1 / q for q in reversed(r.get("ratio_quartiles", [r["ratio"]] * 2)))
        first = [f"{r['first_call_extra_s']:.1f}"] if compiled else []
        return [r["name"], f"{p['passes']} ({p['inputs']})", f"{r['median_s']:.3f}", f"{r['reference_median_s']:.3f}",
                f"{r['images_per_s']:.3g}", *first, f"{r['speedup']:.2f}× ({low:.2f}–{high:.2f})",
                _verdict(r["speedup"] >= TARGET_NAIVE_SPEEDUP)]

    first_col = [("first call extra (s)", "---:")] if compiled else []
    return _table(
        f"Against the model's naive passes ({ours}{naive}, the same inputs; target ≥ {TARGET_NAIVE_SPEEDUP}× faster)",
        [("method", "---"), ("passes (inputs)", "---:"), ("ours (s)", "---:"), ("naive (s)", "---:"),
         ("images/s", "---:"), *first_col, ("speed-up (quartiles)", "---:"), ("meets", "---")],
        rows, cells,
    )


def _xplique_table(section: dict[str, Any], fw: str) -> list[str]:
    target = TARGET_XPLIQUE[fw]
    title = f"Xplique side by side (same model and settings; target ours ÷ Xplique ≤ {target})"
    if section.get("status") != "ok":
        return [f"#### {title}", "", f"Skipped: {section.get('note', '')}", ""]
    env, settings = section.get("environment", {}), section.get("settings", {})
    bridge = " through its `TorchWrapper` (requires_grad=False)" if fw == "torch" else ""
    lines = [f"#### {title}", "",
             f"Xplique {env.get('xplique')} (TensorFlow {env.get('tensorflow')}{', torch ' + env['torch'] if env.get('torch') else ''})"
             f"{bridge}, in its own environment; {settings.get('n_images')} images of "
             f"{settings.get('size')}×{settings.get('size')}, {settings.get('batch_size')} inputs per pass; "
             f"ours on {_adapter_call(settings.get('ours') or {})}.", ""]

    def cells(r: dict[str, Any]) -> list[str]:
        if r["kind"] == "metric":
            agree = f"{r['ours_score']:.3f} / {r['xplique_score']:.3f}"
        else:
            agree = "" if r.get("agreement") is None else f"r = {r['agreement']:.3f}"
        return [r["name"], _fmt_params(r.get("params")), f"{r['median_s']:.3f}", f"{r['reference_median_s']:.3f}",
                _ratio(r, 2), agree, _verdict(r["ratio"] <= target)]

    return lines + _table(
        "", [("method", "---"), ("settings", "---"), ("ours (s)", "---:"), ("Xplique (s)", "---:"),
             ("ours ÷ Xplique (quartiles)", "---:"), ("agreement (maps r; scores ours / theirs)", "---:"),
             ("meets", "---")],
        section["rows"], cells,
    )[2:]


def _quality_tables(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["#### Quality per forward pass (16× reference; target: adaptive ≥ 3× fewer passes for r ≥ 0.99)", ""]
    for r in rows:
        lines += [f"**{r['method']}** on the {r['model']} — reference {_fmt_params(r['reference'])}:", ""]
        if r["kind"] == "metric":
            lines += ["| setting | passes per image | largest error vs reference | seed-to-seed spread |",
                      "|---|---:|---:|---:|"]
            for c in r["candidates"]:
                spread = "–" if c.get("seed_spread") is None else f"{c['seed_spread']:.3f}"
                lines.append(f"| {c['label']} | {c['passes']:.0f} | {c['max_error']:.3f} | {spread} |")
        else:
            lines += ["| setting | passes per image | r with reference (worst image) | seed-to-seed r | "
                      "passes for r = 0.99 | deletion ↓ | insertion ↑ |", "|---|---:|---:|---:|---:|---:|---:|"]
            for c in r["candidates"]:
                seed = "– (deterministic)" if c.get("seed_correlation") is None else f"{c['seed_correlation']:.3f}"
                need = "–" if c.get("passes_for_target") is None else f"{c['passes_for_target']:.0f}"
                lines.append(f"| {c['label']} | {c['passes']:.0f} | {c['correlation']:.3f} | {seed} | {need} | "
                             f"{c['deletion']:.3f} | {c['insertion']:.3f} |")
        lines.append("")
    return lines


def _compile_table(rows: list[dict[str, Any]], fw: str) -> list[str]:
    how = "`torch.compile`" if fw == "torch" else "XLA `jit_compile`"

    def cells(r: dict[str, Any]) -> list[str]:
        pays = "never" if r.get("pays_after_calls") is None else f"{max(0.0, r['pays_after_calls']):.0f} calls"
        return [r["name"], _fmt_params(r.get("params")), f"{r['eager_first_call_s']:.2f}", f"{r['first_call_s']:.2f}",
                f"{r['reference_median_s']:.3f}", f"{r['median_s']:.3f}", f"{r['speedup']:.2f}×", pays]

    return _table(
        f"Compilation: eager against `xt.adapt(model, compile=True)` ({how}; for reading)",
        [("method", "---"), ("settings", "---"), ("first call eager (s)", "---:"), ("first call compiled (s)", "---:"),
         ("eager (s)", "---:"), ("compiled (s)", "---:"), ("speed-up", "---:"), ("pays after", "---:")],
        rows, cells,
    )


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


def _adapter_call(options: dict[str, Any]) -> str:
    """How our side's model was adapted, as code: ``xt.adapt(model, compile=True)``."""
    args = "".join(f", {k}={v!r}" for k, v in options.items())
    return f"`xt.adapt(model{args})`"
