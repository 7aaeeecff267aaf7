"""What a dataset run computes: the method and metric configurations (each with a stable hash
of its parameters), the per-image seeds, the model to build in each worker, the targets.

Everything here is picklable, so the Ray engine ships it to its actors as is.

Seeds. A stochastic method or metric (one with a ``seed`` parameter) gets, for each image, the
seed :func:`derive_seed` ``(base, image_id, name)``: a hash of the base seed (the ``seed`` given
in the component's parameters, else the run's ``seed``), the image's id and the component's
name. It never
depends on the partition, the worker or the position of the image in a batch, so every engine,
every ``group_size`` and every resumed run gives each image the same explanation.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..base import AttributionMethod, Metric
from ..errors import ExplanationShapeError, ModelLoadError, ParameterError
from ..registry import get_registry

__all__ = [
    "Component",
    "ModelSpec",
    "Plan",
    "components",
    "derive_seed",
    "import_callable",
]

#: Parameters that change how fast a result is computed, never the result: left out of the hash
#: so a run resumed with another batch size (on a GPU, say) reuses what is stored.
_SPEED_PARAMS = ("batch_size", "progress")


def derive_seed(base: int, image_id: str, component: str) -> int:
    """The seed of ``component`` (a method or metric name) for one image: a 63-bit hash of the
    base seed, the image id and the name.

    Example:
        >>> derive_seed(0, "cat/001.png", "rise") == derive_seed(0, "cat/001.png", "rise")
        True
        >>> derive_seed(0, "cat/001.png", "rise") != derive_seed(1, "cat/001.png", "rise")
        True
    """
    text = f"{int(base)}\x00{component}\x00{image_id}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def canonical(value: Any) -> Any:
    """``value`` as JSON-able data that is equal across processes for equal parameters
    (callables and classes by qualified name, arrays by content hash)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return canonical(value.item())
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
        return {"array": digest, "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, AttributionMethod | Metric):
        return {"class": _qualified(type(value)), "params": canonical(value.get_params())}
    if isinstance(value, type) or callable(value):
        return _qualified(value)
    return f"{_qualified(type(value))}:{value!r}"


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True, eq=False)
class Component:
    """One configured method or metric of a run.

    Attributes:
        kind: ``"method"`` or ``"metric"``.
        name: the registered name.
        params: every constructor parameter (defaults included; ``seed`` resolved).
        digest: hash of ``name`` and ``params`` without the speed-only ones (``batch_size``).
        seeded: whether it draws random numbers (has a ``seed``): then it runs one image per
            call, with the image's own seed.
    """

    kind: str
    name: str
    params: dict[str, Any]
    digest: str
    seeded: bool

    @property
    def key(self) -> str:
        """``name-digest``: the name of the method's map array in the store."""
        return f"{self.name}-{self.digest}"

    def seed_for(self, image_id: str) -> int | None:
        """The seed this component uses on the image ``image_id`` (``None`` if not seeded)."""
        return derive_seed(self.params["seed"], image_id, self.name) if self.seeded else None

    def build(self, model: Any, seed: int | None = None) -> Any:
        """The method or metric object for ``model``, with ``seed`` where it is seeded."""
        params = {**self.params, "progress": False}
        if self.seeded:
            params["seed"] = seed
        cls = _registered(self.kind, self.name)
        return cls(model, **params)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "params": canonical(self.params)}


def _registered(kind: str, name: str) -> type:
    registry = get_registry()
    return (registry.method if kind == "method" else registry.metric)(name).cls


Entry = str | tuple[str, Mapping[str, Any]] | AttributionMethod | Metric


def components(
    kind: str,
    entries: Iterable[Entry],
    params_by_name: Mapping[str, Mapping[str, Any]] | None,
    *,
    batch_size: int,
    seed: int,
) -> list[Component]:
    """Check and resolve the methods (or metrics) of a run, before any model is built.

    Args:
        kind: ``"method"`` or ``"metric"``.
        entries: registered names, ``(name, params)`` pairs, or instances (their class and
            parameters are used; their model is not).
        params_by_name: extra parameters per name (as ``xt.evaluate``'s ``method_params``).
        batch_size: model inputs per forward pass, unless a component sets its own.
        seed: the base seed of stochastic components whose ``seed`` is not given (or
            ``None``): a component's own default seed is not used.

    Raises:
        UnknownNameError: an unknown name (the message lists the registered ones).
        ParameterError: bad parameters, parameters for a name not listed, a configuration
            listed twice.
        ExplanationShapeError: a metric needs ground-truth masks (not read from datasets).
    """
    params_by_name = {str(k): dict(v) for k, v in (params_by_name or {}).items()}
    out: list[Component] = []
    names = set()
    for entry in entries:
        name, given = _entry(kind, entry, params_by_name)
        names.add(name)
        cls = _registered(kind, name)
        if kind == "metric" and getattr(cls, "needs_masks", False):
            raise ExplanationShapeError(
                f"metric {name!r} needs ground-truth masks, which dataset runs do not read; "
                "use xt.evaluate with masks=... instead"
            )
        given.setdefault("batch_size", batch_size)
        params = cls(None, **given).get_params()  # validates; constructors store parameters only
        params.pop("progress", None)
        seeded = "seed" in params
        if seeded and given.get("seed") is None:  # not set by the user: the run's seed
            params["seed"] = seed
        hashed = {k: v for k, v in params.items() if k not in _SPEED_PARAMS}
        component = Component(kind, name, params, _digest([name, canonical(hashed)]), seeded)
        if any(c.key == component.key for c in out):
            raise ParameterError(f"{kind} {name!r} is listed twice with the same parameters")
        out.append(component)
    unknown = sorted(set(params_by_name) - names)
    if unknown:
        raise ParameterError(
            f"{kind}_params has entries {unknown} that are not among the {kind}s given ({sorted(names)})"
        )
    return out


def _entry(kind: str, entry: Any, params_by_name: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    base = AttributionMethod if kind == "method" else Metric
    if isinstance(entry, str):
        return entry, dict(params_by_name.get(entry, {}))
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
        if not isinstance(entry[1], Mapping):
            raise ParameterError(f"({entry[0]!r}, params): params must be a dict, got {type(entry[1]).__name__}")
        return entry[0], {**params_by_name.get(entry[0], {}), **entry[1]}
    if isinstance(entry, base):
        name = getattr(type(entry), "name", "")
        if not name:
            raise ParameterError(f"{type(entry).__name__} has no registered name; register it as a plugin")
        return name, entry.get_params()
    raise ParameterError(
        f"{kind}s must be registered names, (name, params) pairs or {base.__name__} instances, "
        f"got {type(entry).__name__}"
    )


# -- the model ---------------------------------------------------------------------------------
def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"`` or ``"path/to/file.py:function"``.

    Raises:
        ParameterError: malformed spec, missing module or file, or not callable.

    Example:
        >>> import_callable("numpy:asarray", "preprocess") is np.asarray
        True
    """
    module_spec, sep, attr = str(spec).rpartition(":")
    if not sep or not module_spec or not attr:
        raise ParameterError(f"{what} must look like package.module:function or file.py:function, got {spec!r}")
    if module_spec.endswith(".py"):
        # Not io's factory loader: that one registers the module in sys.modules, and a function
        # of a registered module is pickled by reference, which Ray actors could not import.
        # Left unregistered, the function travels to the actors by value.
        path = Path(module_spec)
        if not path.is_file():
            raise ParameterError(f"{what}: file not found: {module_spec!r}")
        name = f"_xai_toolbox_user_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ParameterError(f"{what}: cannot import {module_spec!r}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_spec)
        except ImportError as exc:
            raise ParameterError(f"{what}: cannot import module {module_spec!r} ({exc})") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ParameterError(f"{what}: {module_spec!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ParameterError(f"{what}: {spec!r} is not callable")
    return target


@dataclass(frozen=True)
class ModelSpec:
    """How each worker gets the model: a file or ``"module:factory"`` string (loaded with
    :func:`xai_toolbox.io.load_model`'s safe defaults), a zero-argument factory, or a model
    object (local engine only: it is not rebuilt)."""

    spec: str | None = None
    factory: Callable[[], Any] | None = None
    weights: str | None = None
    trust_model_code: bool = False
    obj: Any = field(default=None, compare=False)

    @property
    def rebuildable(self) -> bool:
        """Whether a worker can build the model itself (a spec or a factory)."""
        return self.obj is None

    def describe(self) -> str:
        if self.spec is not None:
            return self.spec + (f" with weights {self.weights}" if self.weights else "")
        if self.factory is not None:
            return f"factory {_qualified(self.factory)}"
        return f"{_qualified(type(self.obj))} object"

    def build(self) -> Any:
        """The model (built or loaded now; the object itself for an object)."""
        if self.obj is not None:
            return self.obj
        if self.factory is not None:
            try:
                return self.factory()
            except Exception as exc:
                raise ModelLoadError(f"the model factory raised {type(exc).__name__}: {exc}") from exc
        from ..io import load_model

        return load_model(self.spec, weights=self.weights, trust_model_code=self.trust_model_code).model

    def own_preprocess(self) -> Callable[..., Any]:
        """The ``preprocess`` function defined next to the model's factory (its module's)."""
        if self.factory is not None:
            module = getattr(self.factory, "__module__", None) or ""
            func = getattr(importlib.import_module(module), "preprocess", None) if module else None
            if callable(func):
                return func
            raise ParameterError(f"preprocess='model': the factory's module {module!r} defines no preprocess()")
        if self.spec is not None and ":" in self.spec and not Path(self.spec).exists():
            module_spec = self.spec.rpartition(":")[0]
            return import_callable(f"{module_spec}:preprocess", "preprocess='model'")
        raise ParameterError(
            "preprocess='model' uses the preprocess() function of the model's factory module; "
            f"the model {self.describe()} has none: pass preprocess=a function instead"
        )


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything a worker needs besides the model and the images.

    Attributes:
        methods / metrics: the configurations (every metric scores every method).
        targets: ``"top1"`` (the model's prediction), ``"label"`` or a class index.
        batch_size: model inputs per forward pass for top-1 predictions.
        preprocess: ``f(raw image) -> model input``, or ``None`` for the default (files:
            ``mean``/``std`` normalisation and the model's layout; arrays: as given).
        files: whether the raw images are ``(H, W, C)`` pictures in ``[0, 1]`` read from files.
        mean / std: the default normalisation of files.
        image_shape: the raw shape every image must have (that of the first readable one).
    """

    methods: tuple[Component, ...]
    metrics: tuple[Component, ...]
    targets: str | int
    batch_size: int
    preprocess: Callable[[Any], Any] | None
    files: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    image_shape: tuple[int, ...]

    def component(self, key: str) -> Component:
        for c in (*self.methods, *self.metrics):
            if c.key == key:
                return c
        raise KeyError(key)
