"""Plugin discovery: every method, metric, framework and adapter comes from an entry point.

Plugins are modules declared under the entry-point group ``xai_toolbox`` (the built-ins too, in
this project's ``pyproject.toml``). They are loaded one at a time so one broken plugin cannot
take the others down:

* a plugin that fails to import or register, implements a hook that does not exist (a typo),
  or defines a hook function without ``@xt.hookimpl`` warns with its name and is skipped (an
  error when ``XAI_TOOLBOX_STRICT_PLUGINS=1``);
* two plugins registering the same name for one kind (method, metric, concept method, feature
  visualisation, framework) are both disabled, with a warning naming both (an error under the
  strict variable); everything else keeps working;
* ``XAI_TOOLBOX_DISABLE_PLUGINS`` (comma-separated entry-point names, or ``all`` for every
  third-party plugin) switches plugins off.

Loading cannot deadlock: a plugin module may use ``xt.SomeMethod`` at import time (to subclass
a built-in, say); on the loading thread the lookup sees what has been registered so far (the
built-ins load first).
"""

from __future__ import annotations

import difflib
import importlib.metadata as importlib_metadata
import inspect
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError

GROUP = "xai_toolbox"
PROJECT = "xai-toolbox"
hookimpl = pluggy.HookimplMarker(GROUP)

#: The registries kinds, in the order ``xai-toolbox list`` shows them.
KINDS = ("method", "metric", "concept", "featurevis", "framework")
_HOOKS = {
    "method": "register_methods",
    "metric": "register_metrics",
    "concept": "register_concepts",
    "featurevis": "register_featurevis",
    "framework": "register_frameworks",
}
#: How messages name a kind where its table name is not a word.
_NOUNS = {"concept": "concept method", "featurevis": "feature visualisation"}


class PluginWarning(UserWarning):
    """A plugin could not be loaded (or was disabled); the others still are."""


@dataclass(frozen=True)
class Entry:
    """A registered method, metric or framework and where it came from.

    ``obj`` is the class for methods and metrics, the
    :class:`~xai_toolbox.backends.frameworks.Framework` for frameworks.
    """

    name: str
    obj: Any
    plugin: str  # entry-point name
    package: str  # distribution that declared the entry point

    @property
    def cls(self) -> Any:
        """The registered class (methods and metrics)."""
        return self.obj


class Registry:
    """Methods, metrics, frameworks and backend hooks collected from the plugins."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(hookspecs)
        self.tables: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        #: entry-point name → why it failed to load
        self.failed: dict[str, str] = {}
        #: entry-point name → why it was disabled (it claimed a name another plugin claims)
        self.disabled: dict[str, str] = {}
        #: names two plugins claimed: a third claimant is refused too
        self._contested: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self._packages: dict[str, str] = {}

    @property
    def hook(self) -> Any:
        return self.manager.hook

    @property
    def methods(self) -> dict[str, Entry]:
        return self.tables["method"]

    @property
    def metrics(self) -> dict[str, Entry]:
        return self.tables["metric"]

    @property
    def frameworks(self) -> dict[str, Entry]:
        return self.tables["framework"]

    @property
    def concepts(self) -> dict[str, Entry]:
        """Concept-extraction methods (CRAFT, ...), by name."""
        return self.tables["concept"]

    @property
    def featurevis(self) -> dict[str, Entry]:
        """Feature-visualisation methods (MACO, ...), by name."""
        return self.tables["featurevis"]

    # -- loading -------------------------------------------------------------------------
    def add_plugin(self, module: Any, plugin: str, package: str) -> None:
        """Register one plugin module and collect what it provides (all or nothing).

        Raises :class:`PluginError` for a malformed plugin (a hook typo, a hook function
        without ``@hookimpl``, an invalid name, the same name twice in one plugin). A name
        another plugin already registered disables both (:meth:`_disable_clash`).
        """
        _check_hook_functions(module, plugin)
        found: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.manager.register(module, name=plugin)
        try:
            self.manager.check_pending()  # @hookimpl functions whose name is no hook: typos
            for kind in KINDS:
                register = _collector(found[kind], kind, plugin, package)
                self.manager.subset_hook_caller(
                    _HOOKS[kind], [p for p in self.manager.get_plugins() if p is not module]
                )(register=register)
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(module)
            raise PluginError(f"plugin {plugin!r} (package {package}): {exc}{_typo_hint(exc)}") from None
        except BaseException:
            self.manager.unregister(module)
            raise
        self._packages[plugin] = package
        clashes = [(kind, name) for kind in KINDS for name in found[kind] if name in self.tables[kind] or name in self._contested[kind]]
        if clashes:
            self._disable_clash(plugin, package, clashes)
            return
        for kind in KINDS:
            self.tables[kind].update(found[kind])

    def _disable_clash(self, plugin: str, package: str, clashes: list[tuple[str, str]]) -> None:
        """Two plugins claim one name: neither may silently win, so both are switched off."""
        others: dict[str, str] = {}
        for kind, name in clashes:
            self._contested[kind].add(name)
            other = self.tables[kind].get(name)
            if other is not None:
                others[other.plugin] = other.package
        self.manager.unregister(name=plugin)
        for other in others:
            self._remove(other)
        described = "; ".join(
            f"{kind} {name!r}" for kind, name in clashes
        )
        by = ", ".join(f"plugin {p!r} (package {pkg})" for p, pkg in others.items()) or "a plugin disabled earlier"
        message = (
            f"xai-toolbox plugins claim the same name — {described}: by {by} and by plugin "
            f"{plugin!r} (package {package}); both are disabled. Switch one off with "
            f"XAI_TOOLBOX_DISABLE_PLUGINS={plugin} (or {', '.join(others) or 'the other'})"
        )
        for name in (plugin, *others):
            self.disabled[name] = message
        if _strict():
            raise PluginError(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def _remove(self, plugin: str) -> None:
        for table in self.tables.values():
            for name in [n for n, e in table.items() if e.plugin == plugin]:
                del table[name]
        if self.manager.has_plugin(plugin):
            self.manager.unregister(name=plugin)

    # -- lookups -------------------------------------------------------------------------
    def _lookup(self, kind: str, name: str) -> Entry:
        table = self.tables[kind]
        if name not in table:
            available = ", ".join(sorted(table)) or "none"
            close = difflib.get_close_matches(str(name), list(table), n=1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            hint = ""
            if self.failed:
                hint += "; plugins that failed to load: " + ", ".join(sorted(self.failed))
            if self.disabled:
                hint += "; plugins disabled because they claim the same names: " + ", ".join(sorted(self.disabled))
            noun = _NOUNS.get(kind, kind)
            raise UnknownNameError(f"unknown {noun} {name!r}{suggestion}; available {noun}s: {available}{hint}")
        return table[name]

    def method(self, name: str) -> Entry:
        return self._lookup("method", name)

    def metric(self, name: str) -> Entry:
        return self._lookup("metric", name)

    def framework(self, name: str) -> Entry:
        return self._lookup("framework", name)

    def concept(self, name: str) -> Entry:
        return self._lookup("concept", name)

    def feature_visualization(self, name: str) -> Entry:
        return self._lookup("featurevis", name)

    def package_of(self, plugin: str) -> str:
        """The distribution that declared the entry point ``plugin``."""
        return self._packages.get(plugin, "unknown")

    def adapter_plugins(self) -> list[tuple[str, str]]:
        """``(plugin, package)`` of every loaded plugin that implements ``adapt_model``."""
        impls = self.manager.hook.adapt_model.get_hookimpls()
        return [(impl.plugin_name, self.package_of(impl.plugin_name)) for impl in impls]


def _collector(table: dict[str, Entry], kind: str, plugin: str, package: str) -> Callable[[Any, Any], None]:
    def register(name: Any, obj: Any = None) -> None:
        if kind == "framework":  # register(Framework(...)): the name is inside
            name, obj = getattr(name, "name", None), name
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} with an invalid name {name!r}")
        if name in table:
            raise PluginError(f"plugin {plugin!r} registered the {kind} {name!r} twice")
        table[name] = Entry(name, obj, plugin, package)

    return register


def _check_hook_functions(module: Any, plugin: str) -> None:
    """A function named like a hook but not marked ``@hookimpl`` would be silently ignored."""
    names = [n for n in dir(hookspecs) if not n.startswith("_") and hasattr(getattr(hookspecs, n), "xai_toolbox_spec")]
    for name in names:
        fn = getattr(module, name, None)
        if inspect.isfunction(fn) and not hasattr(fn, f"{GROUP}_impl"):
            raise PluginError(
                f"plugin {plugin!r}: function {name}() is not marked as a hook: decorate it with "
                "@xai_toolbox.hookimpl"
            )


def _typo_hint(exc: Exception) -> str:
    text = str(exc)
    names = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), f"{GROUP}_spec")]
    for word in text.replace("'", " ").replace('"', " ").split():
        close = difflib.get_close_matches(word, names, n=1)
        if close and word not in names:
            return f" (did you mean {close[0]}?)"
    return f" (hooks: {', '.join(sorted(names))})"


def _disabled() -> tuple[set[str], bool]:
    raw = os.environ.get("XAI_TOOLBOX_DISABLE_PLUGINS", "")
    names = {part.strip() for part in raw.split(",") if part.strip()}
    return names - {"all"}, "all" in names


def _strict() -> bool:
    return os.environ.get("XAI_TOOLBOX_STRICT_PLUGINS", "").lower() in {"1", "true", "yes"}


def load_registry() -> Registry:
    """Build a fresh registry from the installed entry points (see module docs)."""
    registry = Registry()
    _loading.registry = registry  # lookups from plugin modules imported below see it
    try:
        _load_into(registry)
    finally:
        _loading.registry = None
    return registry


def _load_into(registry: Registry) -> None:
    disabled, all_third_party = _disabled()
    for ep in sorted(importlib_metadata.entry_points(group=GROUP), key=_builtin_first):
        package = ep.dist.name if ep.dist is not None else "unknown"
        if ep.name in disabled or (all_third_party and package != PROJECT):
            continue
        if registry.manager.has_plugin(ep.name) or ep.name in registry.failed or ep.name in registry.disabled:
            continue  # the same distribution seen twice on sys.path
        try:
            module = ep.load()
            registry.add_plugin(module, ep.name, package)
        except Exception as exc:  # a third-party bug must not break the toolbox
            registry.failed[ep.name] = f"{type(exc).__name__}: {exc}"
            detail = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
            message = (
                f"xai-toolbox plugin {ep.name!r} (package {package}, {ep.value}) failed to load: "
                f"{detail}{_source_checkout_hint(exc)}"
            )
            if _strict():
                raise PluginError(message) from exc
            warnings.warn(message, PluginWarning, stacklevel=3)


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


class _Loading(threading.local):
    registry: Registry | None = None


_registry: Registry | None = None
_lock = threading.RLock()
_loading = _Loading()


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use.

    Called again from a plugin module while the registry is being loaded (on the loading
    thread), it returns the registry as loaded so far instead of waiting for itself.
    """
    global _registry
    partial = _loading.registry
    if partial is not None:
        return partial
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = load_registry()
    return _registry


def reload_plugins() -> Registry:
    """Discard the loaded registry and discover the plugins again (after installing one).

    Example:
        >>> import xai_toolbox as xt
        >>> "saliency" in xt.reload_plugins().methods
        True
    """
    global _registry
    with _lock:
        _registry = load_registry()
    return _registry
