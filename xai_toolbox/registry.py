"""Plugin discovery: every method, metric and backend comes from an entry point.

Plugins are modules declared under the entry-point group ``xai_toolbox`` (the built-ins too, in
this project's ``pyproject.toml``). They are loaded one at a time so one broken plugin cannot
take the others down:

* a plugin that fails to import or register warns with its name (an error when
  ``XAI_TOOLBOX_STRICT_PLUGINS=1``);
* two plugins registering the same method or metric name is an error naming both;
* ``XAI_TOOLBOX_DISABLE_PLUGINS`` (comma-separated entry-point names, or ``all`` for every
  third-party plugin) switches plugins off.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError

GROUP = "xai_toolbox"
PROJECT = "xai-toolbox"
hookimpl = pluggy.HookimplMarker(GROUP)


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others still are."""


@dataclass(frozen=True)
class Entry:
    """A registered method or metric and where it came from."""

    name: str
    cls: type
    plugin: str  # entry-point name
    package: str  # distribution that declared the entry point


class Registry:
    """Methods, metrics and backend hooks collected from the plugins."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(hookspecs)
        self.methods: dict[str, Entry] = {}
        self.metrics: dict[str, Entry] = {}
        self.failed: dict[str, str] = {}

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def add_plugin(self, module: Any, plugin: str, package: str) -> None:
        """Register one plugin module and collect what it provides (all or nothing)."""
        methods: dict[str, Entry] = {}
        metrics: dict[str, Entry] = {}

        def collector(table: dict[str, Entry], kind: str) -> Any:
            def register(name: str, cls: type) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {plugin!r} registered a {kind} with an invalid name {name!r}")
                for existing in (table, self.methods if kind == "method" else self.metrics):
                    if name in existing:
                        other = existing[name]
                        raise PluginError(
                            f"{kind} name {name!r} is registered twice: by plugin {other.plugin!r} "
                            f"(package {other.package}) and by plugin {plugin!r} (package {package}); "
                            f"disable one with XAI_TOOLBOX_DISABLE_PLUGINS"
                        )
                table[name] = Entry(name, cls, plugin, package)

            return register

        self.manager.register(module, name=plugin)
        try:
            caller = self.manager.subset_hook_caller
            others = [p for p in self.manager.get_plugins() if p is not module]
            caller("register_methods", others)(register=collector(methods, "method"))
            caller("register_metrics", others)(register=collector(metrics, "metric"))
        except BaseException:
            self.manager.unregister(module)
            raise
        self.methods.update(methods)
        self.metrics.update(metrics)

    def _lookup(self, table: dict[str, Entry], kind: str, name: str) -> Entry:
        if name not in table:
            available = ", ".join(sorted(table)) or "none"
            hint = ""
            if self.failed:
                hint = "; plugins that failed to load: " + ", ".join(sorted(self.failed))
            raise UnknownNameError(f"unknown {kind} {name!r}; available {kind}s: {available}{hint}")
        return table[name]

    def method(self, name: str) -> Entry:
        return self._lookup(self.methods, "method", name)

    def metric(self, name: str) -> Entry:
        return self._lookup(self.metrics, "metric", name)


def _disabled() -> tuple[set[str], bool]:
    raw = os.environ.get("XAI_TOOLBOX_DISABLE_PLUGINS", "")
    names = {part.strip() for part in raw.split(",") if part.strip()}
    return names - {"all"}, "all" in names


def _strict() -> bool:
    return os.environ.get("XAI_TOOLBOX_STRICT_PLUGINS", "").lower() in {"1", "true", "yes"}


def load_registry() -> Registry:
    """Build a fresh registry from the installed entry points (see module docs)."""
    registry = Registry()
    disabled, all_third_party = _disabled()
    for ep in sorted(importlib_metadata.entry_points(group=GROUP), key=_builtin_first):
        package = ep.dist.name if ep.dist is not None else "unknown"
        if ep.name in disabled or (all_third_party and package != PROJECT):
            continue
        if registry.manager.has_plugin(ep.name):
            continue  # the same distribution seen twice on sys.path
        try:
            module = ep.load()
            registry.add_plugin(module, ep.name, package)
        except PluginError:
            raise
        except Exception as exc:  # a third-party bug must not break the toolbox
            registry.failed[ep.name] = f"{type(exc).__name__}: {exc}"
            message = (
                f"xai-toolbox plugin {ep.name!r} (package {package}, {ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}{_source_checkout_hint(exc)}"
            )
            if _strict():
                raise PluginError(message) from exc
            warnings.warn(message, PluginWarning, stacklevel=2)
    return registry


def _source_checkout_hint(exc: Exception, package_dir: Path | None = None) -> str:
    """Explain the one failure a contributor meets: importing the engine from a source checkout.

    The built-ins live in the checkout's top-level ``plugins/`` and ``metrics/`` and become
    ``xai_toolbox.plugins`` / ``xai_toolbox.metrics`` only when installed. Python run from the
    checkout's root imports ``xai_toolbox`` from there, where those sub-packages do not exist
    unless the install is editable.
    """
    if not isinstance(exc, ModuleNotFoundError) or not (exc.name or "").startswith(
        (f"{__package__}.plugins", f"{__package__}.metrics")
    ):
        return ""
    here = package_dir or Path(__file__).resolve().parent
    if (here / "plugins").is_dir() or not (here.parent / "plugins").is_dir():
        return ""
    return (
        f" (xai_toolbox was imported from the source checkout {here.parent}, whose built-ins are "
        "only found when it is installed in editable mode: run `pip install -e .` there, or run "
        "Python from another directory)"
    )


def _builtin_first(ep: importlib_metadata.EntryPoint) -> tuple[int, str]:
    package = ep.dist.name if ep.dist is not None else ""
    return (0 if package == PROJECT else 1, ep.name)


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = load_registry()
    return _registry


def reload_plugins() -> Registry:
    """Discard the loaded registry and discover the plugins again (after installing one)."""
    global _registry
    with _lock:
        _registry = load_registry()
    return _registry
