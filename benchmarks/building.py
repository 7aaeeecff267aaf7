"""Methods and metrics built by registry name (or an explicit class) with a case's parameters.

A case's ``"a|b"`` parameter keys list alternative spellings; the first one the class accepts
is used and the others are reported in the results' ``notes``.
"""

from __future__ import annotations

from typing import Any

from .config import Case, MemoryCase, PeerCase
from .workbench import Workbench


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
    listing = getattr(cls, "param_names", None) or getattr(cls, "_param_names", None)
    accepted = set(listing()) if listing is not None else set()
    out, notes = {}, []
    for key, value in params.items():
        names = key.split("|")
        chosen = next((n for n in names if n in accepted), None)
        if chosen is None:
            notes.append(f"{cls.__name__} takes none of {names}; left at its default")
            continue
        out[chosen] = value
    return out, notes


def make(
    cls: type, bench: Workbench, params: dict[str, Any], batch_size: int, model: Any = None
) -> tuple[Any, list[str]]:
    """``cls`` on the bench's model (or ``model``: an adapter with speed options)."""
    kwargs, notes = build_params(cls, params)
    kwargs = {"batch_size": batch_size, "progress": False, **kwargs}
    return cls(bench.model if model is None else model, **kwargs), notes
