"""JAX adapter: ``jax.numpy`` functions (``jax.jit`` or not), Flax NNX and Flax Linen models.

Built on the public adapter contract only (:class:`~xai_toolbox.extend.ModelAdapter`): the
worked example of an adapter plugin for a framework with immutable arrays and functional
gradients.

Every model becomes a *program*: a pure function ``run(params, x)`` of its parameters (a pytree
of arrays, given to every compiled pass as an argument, never baked into it) and its inputs.

* a function ``f(x)`` (a ``jax.jit`` function is kept as it is) — no parameters, no layers;
* :class:`~xai_toolbox.JaxModel` ``(fn, params)`` — ``fn(params, x)``, no layers;
* Flax Linen: a bound module, ``functools.partial(module.apply, variables, **kwargs)`` or
  ``JaxModel(module, variables, **kwargs)``; layers are the submodules, named by their Flax
  path (``"Conv_0"``, ``"backbone/block1/conv"``), reached with ``flax.linen.intercept_methods``;
* Flax NNX: an ``nnx.Module``, split into its graph and state (``nnx.split``) and merged again
  inside each compiled pass, in eval mode (``Dropout``/``BatchNorm`` deterministic on that copy:
  the model itself is never changed); layers are the submodules, named by their attribute path
  (``"conv1"``, ``"blocks/0/conv"``), reached by wrapping their class's ``__call__`` for the
  instances of the pass only, while it is traced.

Gradients are ``jax.value_and_grad`` on the inputs only. The forward pass, the built-in score's
gradient and the inner-layer passes are ``jax.jit`` functions, traced once per input shape and
shared by every adapter of the same model. Images are channels-last (NHWC, Flax's layout) unless
``JaxModel(..., channel_axis=1)``. Guided Backprop and DeconvNet rewrite the traced program:
every ``jax.nn.relu`` (Flax's ``nn.relu``/``nnx.relu`` are the same function), inside jitted
functions too, is evaluated with the rule's backward pass.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import eagerpy as ep
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, LayerError, UnsupportedModelError
from .adapter import (
    Draw,
    ModelAdapter,
    ScoreOf,
    as_type_of,
    check_relu_rule,
    check_replacement,
    float32_array,
    last_informative,
    pick_default_layer,
    select_output,
    token_layers,
    weighted_score,
)
from .jax_model import JaxModel, is_linen_module
from .test_models import canonical_shape, keras_layout

#: ``tap(out) -> out``: what a pass does with one layer's output while the program is traced.
Tap = Callable[[Any], Any]
#: ``record(name, out)``: called with every layer's output while the program is traced.
Record = Callable[[str, Any], None]

# Layer taps patch classes (NNX) or install interceptors (Linen) while a program is traced:
# traces that tap layers are serialised.
_trace_lock = threading.RLock()


def is_array(x: Any) -> bool:
    """Whether ``x`` is a JAX array (tracers included)."""
    return isinstance(x, jax.Array)


def _float32(t: Any) -> Any:
    """Values of a float16/bfloat16/float64 model as float32, the dtype the toolbox works in."""
    return t.astype(jnp.float32) if jnp.issubdtype(t.dtype, jnp.floating) and t.dtype != jnp.float32 else t


# -- programs: a model as a pure function of its parameters --------------------------------------
class Program:
    """A model as ``run(params, x, taps, record)``: pure, traceable, holding no adapter.

    ``taps`` maps qualified layer names to functions applied to their outputs while the
    program is traced (capture, replace, add a perturbation); ``record`` sees every layer.
    """

    #: Whether the program has named inner layers.
    has_layers = False

    def __init__(self, params: Any, channel_axis: int = -1) -> None:
        # No reference to the user's model: compiled passes that hold the program are cached
        # under the model, weakly.
        self.params = params
        self.channel_axis = channel_axis

    def run(self, params: Any, x: Any, taps: Mapping[str, Tap] | None = None, record: Record | None = None) -> Any:
        raise NotImplementedError

    def layer_names(self, spec: Any) -> list[str]:
        """Qualified layer names (``spec``: the inputs' shape, for programs that find their
        layers by tracing; ``None`` when no input was seen yet)."""
        return []

    def trainable(self, params: Any) -> Any:
        """The trainable part of ``params`` (what model randomisation re-initialises)."""
        return params

    def with_trainable(self, params: Any, trainable: Any) -> Any:
        """``params`` with its trainable part replaced."""
        return trainable

    def rebuilt(self, params: Any) -> Any:
        """A model object of the user's kind with ``params`` (for copies)."""
        raise UnsupportedModelError("this JAX model cannot be copied by this toolbox")

    def cache_key(self) -> Any:
        """What makes two programs the same function of their parameters (compiled passes are
        shared between them); ``None``: only the model object itself."""
        return None

    def structure(self) -> Program:
        """This program without its parameters: what compiled passes hold (so a cache of
        them never keeps a model's weights alive)."""
        bare = copy.copy(self)
        bare.__dict__["params"] = None
        return bare


class FunctionProgram(Program):
    """``fn(x)`` or ``fn(params, x)`` (a :class:`~xai_toolbox.JaxModel`)."""

    def __init__(self, fn: Callable[..., Any], params: Any, channel_axis: int, kwargs: dict[str, Any]) -> None:
        super().__init__(params, channel_axis)
        self.kwargs = kwargs
        self.with_params = params is not None
        try:  # held weakly: the compiled passes cached under the model must not keep it alive
            ref = weakref.ref(fn)
            self.fn = lambda: ref()
        except TypeError:
            self.fn = lambda: fn

    def run(self, params: Any, x: Any, taps: Mapping[str, Tap] | None = None, record: Record | None = None) -> Any:
        if taps:
            raise LayerError("a JAX function has no named layers")
        fn = self.fn()
        return fn(params, x, **self.kwargs) if self.with_params else fn(x, **self.kwargs)

    def rebuilt(self, params: Any) -> Any:
        return JaxModel(self.fn(), params, channel_axis=self.channel_axis, **self.kwargs)

    def cache_key(self) -> Any:
        return ("function", self.fn(), self.with_params, tuple(sorted(self.kwargs.items())))


class LinenProgram(Program):
    """A Flax Linen module with its variables: ``module.apply(variables, x, **kwargs)``."""

    has_layers = True

    def __init__(self, module: Any, variables: Any, channel_axis: int, kwargs: dict[str, Any], kind: str) -> None:
        super().__init__(variables, channel_axis)
        #: How the user gave the model: "wrapped" (JaxModel), "partial" (of apply) or "bound".
        self.module, self.kwargs, self.kind = module, kwargs, kind
        self._names: dict[Any, list[str]] = {}

    def run(self, params: Any, x: Any, taps: Mapping[str, Tap] | None = None, record: Record | None = None) -> Any:
        if not taps and record is None:
            return self.module.apply(params, x, **self.kwargs)
        import flax.linen as nn

        def intercept(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
            out = next_fun(*args, **kwargs)
            if context.method_name != "__call__":
                return out
            name = "/".join(str(p) for p in context.module.scope.path)
            if not name:  # the root module
                return out
            if record is not None:
                record(name, out)
            tap = taps.get(name) if taps else None
            return out if tap is None else tap(out)

        with nn.intercept_methods(intercept):
            return self.module.apply(params, x, **self.kwargs)

    def layer_names(self, spec: Any) -> list[str]:
        key = None if spec is None else (spec.shape[1:], str(spec.dtype))
        if key not in self._names:
            if spec is None:  # only the modules with variables are known without running it
                names = _group_leaves(self.trainable(self.params))
                self._names[key] = list(dict.fromkeys(names))
            else:
                self._names[key] = [name for name, _ in trace_records(self, spec, leaves_only=False)]
        return self._names[key]

    def trainable(self, params: Any) -> Any:
        return params.get("params", {}) if isinstance(params, Mapping) else params

    def with_trainable(self, params: Any, trainable: Any) -> Any:
        if not isinstance(params, Mapping) or "params" not in params:
            return trainable
        return {**params, "params": trainable}

    def rebuilt(self, params: Any) -> Any:
        if self.kind == "wrapped":
            return JaxModel(self.module, params, channel_axis=self.channel_axis, **self.kwargs)
        if self.kind == "partial":
            return functools.partial(self.module.apply, params, **self.kwargs)
        return self.module.bind(params)

    def cache_key(self) -> Any:
        return ("linen", self.module, tuple(sorted(self.kwargs.items())))


class NnxProgram(Program):
    """A Flax NNX module, as its graph definition and state (``nnx.split``)."""

    has_layers = True

    def __init__(self, model: Any) -> None:
        from flax import nnx

        graphdef, state = nnx.split(model)
        super().__init__(state, -1)
        self.graphdef = graphdef
        self._names = [_path_name(path) for path, _ in nnx.iter_modules(model) if path]
        self._ordered: dict[Any, list[str]] = {}

    def run(self, params: Any, x: Any, taps: Mapping[str, Tap] | None = None, record: Record | None = None) -> Any:
        from flax import nnx

        module = nnx.merge(self.graphdef, params)
        _eval_mode(module)
        if not taps and record is None:
            return module(x)
        named = {id(m): _path_name(path) for path, m in nnx.iter_modules(module) if path}
        wanted = set(named.values()) if record is not None else set(taps or ())
        by_id = {i: name for i, name in named.items() if name in wanted}
        classes = {type(m) for _, m in nnx.iter_modules(module) if id(m) in by_id}
        owner = threading.get_ident()

        def after(instance: Any, out: Any) -> Any:
            name = by_id.get(id(instance))
            if name is None or threading.get_ident() != owner:
                return out
            if record is not None:
                record(name, out)
            tap = taps.get(name) if taps else None
            return out if tap is None else tap(out)

        with _trace_lock, contextlib.ExitStack() as stack:
            for cls in classes:
                stack.enter_context(_ClassCallPatch(cls, after))
            return module(x)

    def layer_names(self, spec: Any) -> list[str]:
        """The submodules' paths, in the order the model calls them once inputs were seen (one
        abstract trace per input shape), else in NNX's (sorted) graph order."""
        if spec is None:
            return list(self._names)
        key = (spec.shape[1:], str(spec.dtype))
        if key not in self._ordered:
            called = [name for name, _ in trace_records(self, spec, leaves_only=False)]
            self._ordered[key] = list(dict.fromkeys([*called, *self._names]))
        return self._ordered[key]

    def trainable(self, params: Any) -> Any:
        from flax import nnx

        return nnx.filter_state(params, nnx.Param) if hasattr(nnx, "filter_state") else params.filter(nnx.Param)

    def with_trainable(self, params: Any, trainable: Any) -> Any:
        from flax import nnx

        return nnx.merge_state(params, trainable) if hasattr(nnx, "merge_state") else params.merge(trainable)

    def rebuilt(self, params: Any) -> Any:
        from flax import nnx

        return nnx.merge(self.graphdef, params)

    def cache_key(self) -> Any:
        return ("nnx", self.graphdef)


def _eval_mode(module: Any) -> None:
    """The merged copy of an NNX model in inference mode (deterministic dropout, running
    batch statistics), whatever mode the user's model is in."""
    for _, m in _nnx_modules(module):
        if hasattr(m, "deterministic"):
            m.deterministic = True
        if hasattr(m, "use_running_average"):
            m.use_running_average = True


def _nnx_modules(module: Any) -> Iterator[tuple[Any, Any]]:
    from flax import nnx

    return nnx.iter_modules(module) if hasattr(nnx, "iter_modules") else module.iter_modules()


class _ClassCallPatch:
    """``cls.__call__`` wrapped for a ``with`` block: ``after(instance, out)`` sees the output.

    NNX modules are called through their class (``__call__`` cannot be set on an instance);
    ``after`` lets every instance but those of the pass through untouched, and the class is
    put back exactly as it was.
    """

    def __init__(self, cls: type, after: Callable[[Any, Any], Any]) -> None:
        self.cls, self.after = cls, after

    def __enter__(self) -> None:
        cls = self.cls
        self.had_own, self.own = "__call__" in cls.__dict__, cls.__dict__.get("__call__")
        original = cls.__call__
        after = self.after

        @functools.wraps(original)
        def call(instance: Any, *args: Any, **kwargs: Any) -> Any:
            return after(instance, original(instance, *args, **kwargs))

        cls.__call__ = call  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        if self.had_own:
            self.cls.__call__ = self.own  # type: ignore[method-assign]
        else:
            del self.cls.__call__


def _path_name(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path)


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


# Parameters first in the canonical order of each layer (PyTorch's weight, then bias), so twin
# models draw the same random values for model randomisation.
_FIRST = ("kernel", "weight", "w", "embedding", "scale")
_SECOND = ("bias", "b")


def _weight_leaves(trainable: Any) -> list[tuple[str, str, Any]]:
    """``(layer, parameter, array)`` for every array of a parameter pytree: the layer is the
    path to the array's parent (an NNX variable's ``value`` is not a level)."""
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(trainable)[0]:
        names = [_key_name(k) for k in path]
        if len(names) >= 2 and names[-1] == "value" and type(path[-1]).__name__ == "GetAttrKey":
            names = names[:-1]
        found.append(("/".join(names[:-1]), names[-1] if names else "", leaf))
    order = {name: i for i, name in enumerate(dict.fromkeys(layer for layer, _, _ in found))}

    def rank(item: tuple[str, str, Any]) -> tuple[int, int]:
        layer, name, _ = item
        return order[layer], 0 if name in _FIRST else 1 if name in _SECOND else 2

    return sorted(found, key=rank)


def _group_leaves(trainable: Any) -> list[str]:
    return [layer for layer, _, _ in _weight_leaves(trainable)]


def trace_records(program: Program, spec: Any, *, leaves_only: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, output shape)`` of every layer the program calls on inputs like ``spec``, in
    the order their outputs are computed: one abstract trace (``jax.eval_shape``), no
    computation. ``leaves_only``: without the layers that contain other recorded layers."""
    records: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str, out: Any) -> None:
        if is_array(out):
            records.append((name, tuple(int(d) for d in out.shape)))

    jax.eval_shape(lambda p, x: program.run(p, x, None, record), program.params, spec)
    seen = list(dict.fromkeys(name for name, _ in records))
    last = {name: shape for name, shape in records}
    records = [(name, last[name]) for name in seen]
    if leaves_only:
        records = [(n, s) for n, s in records if not any(o.startswith(n + "/") for o in seen)]
    return records


def program_for(model: Any) -> Program | None:
    """The program of a JAX model the adapter recognises without being told (``None`` for
    anything else)."""
    if isinstance(model, JaxModel):
        if is_linen_module(model.fn):
            return _linen("wrapped", model.fn, model.params, model.channel_axis, model.call_kwargs)
        return FunctionProgram(model.fn, model.params, model.channel_axis, model.call_kwargs)
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(model, nnx.Module):
        return NnxProgram(model)
    if is_linen_module(model) and getattr(model, "scope", None) is not None:  # bound: module.bind(v)
        module, variables = model.unbind()
        return _linen("bound", module, variables, -1, {})
    if isinstance(model, functools.partial) and _is_linen_apply(model.func) and len(model.args) == 1:
        module = model.func.__self__
        return _linen("partial", module, model.args[0], -1, dict(model.keywords))
    if _is_jitted(model):
        return FunctionProgram(model, None, -1, {})
    return None


def _linen(kind: str, module: Any, variables: Any, channel_axis: int, kwargs: dict[str, Any]) -> LinenProgram:
    if variables is None:
        raise UnsupportedModelError(
            "a Flax Linen module needs its variables: pass xt.JaxModel(module, variables) or "
            "functools.partial(module.apply, variables)"
        )
    return LinenProgram(module, variables, channel_axis, kwargs, kind)


def _is_linen_apply(fn: Any) -> bool:
    return getattr(fn, "__name__", "") == "apply" and is_linen_module(getattr(fn, "__self__", None))


def _is_jitted(model: Any) -> bool:
    """A ``jax.jit`` function (``PjitFunction``), by type name: JAX has no public class for it."""
    return callable(model) and type(model).__module__.split(".")[0] in ("jax", "jaxlib") and hasattr(model, "lower")


def is_jax_model(model: Any) -> bool:
    """Whether the adapter recognises ``model`` without ``framework="jax"``."""
    try:
        return program_for(model) is not None
    except UnsupportedModelError:
        return True  # one of ours, which the adapter will refuse with the reason


# -- compiled passes, shared by every adapter of a model (and of models of one structure) -------
# Passes are cached under the program's structure (an NNX graph definition, a Linen module, a
# function: models of one architecture share their traces, since parameters are arguments),
# the most recent few kept; or, for programs that are their model (Keras), under the model,
# weakly. Cached passes hold no parameters (see ``Program.structure``).
_compiled_by_owner: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_compiled_by_structure: OrderedDict[Any, dict[Any, Any]] = OrderedDict()
_MAX_STRUCTURES = 32
_compiled_lock = threading.Lock()


def _compiled_for(program: Program, owner: Any) -> dict[Any, Any]:
    key = program.cache_key()
    with _compiled_lock:
        try:
            if key is not None:
                found = _compiled_by_structure.get(key)
                if found is None:
                    found = _compiled_by_structure[key] = {}
                    while len(_compiled_by_structure) > _MAX_STRUCTURES:
                        _compiled_by_structure.popitem(last=False)
                _compiled_by_structure.move_to_end(key)
                return found
            found = _compiled_by_owner.get(owner)
            if found is None:
                found = _compiled_by_owner[owner] = {}
        except TypeError:  # not hashable or not weakly referenceable: this adapter only
            found = {}
    return found


# -- ReLU backward rules: the traced program rewritten ----------------------------------------
def _relu_rule(rule: str) -> Callable[[Any], Any]:
    """``relu`` forwards; backwards ``relu(R)``, gated by ``1[z > 0]`` for the guided rule."""
    guided = rule == "guided"

    @jax.custom_vjp
    def relu(z: Any) -> Any:
        return jnp.maximum(z, 0)

    def forward(z: Any) -> tuple[Any, Any]:
        out = jnp.maximum(z, 0)
        return out, out

    def backward(out: Any, upstream: Any) -> tuple[Any]:
        passed = jnp.maximum(upstream, 0)
        return (passed * (out > 0).astype(passed.dtype) if guided else passed,)

    relu.defvjp(forward, backward)
    return relu


def _is_relu(eqn: Any) -> bool:
    """Whether a traced equation is ``jax.nn.relu``: a ``custom_jvp_call`` of one argument
    whose function is ``max(z, 0)`` (possibly inside a ``jit``)."""
    if eqn.primitive.name != "custom_jvp_call" or len(eqn.invars) != 1:
        return False
    inner = eqn.params["call_jaxpr"]
    inner = getattr(inner, "jaxpr", inner)
    while len(inner.eqns) == 1 and _sub_jaxpr(inner.eqns[0]) is not None:
        inner = _sub_jaxpr(inner.eqns[0]).jaxpr
    if len(inner.eqns) != 1 or inner.eqns[0].primitive.name != "max":
        return False
    return any(type(v).__name__ == "Literal" and np.all(np.asarray(v.val) == 0) for v in inner.eqns[0].invars)


def _sub_jaxpr(eqn: Any) -> Any:
    """The closed jaxpr of a ``jit`` (``pjit``) or ``closed_call`` equation, else ``None``."""
    if eqn.primitive.name in ("pjit", "jit", "closed_call"):
        sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
        if sub is not None and hasattr(sub, "consts"):
            return sub
    return None


class _RuledEvaluation:
    """Evaluates a traced program with every ReLU replaced by ``relu`` (nested ``jit``
    functions are inlined so their ReLUs are reached); counts the ReLUs replaced."""

    def __init__(self, relu: Callable[[Any], Any]) -> None:
        self.relu = relu
        self.replaced = 0

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def ruled(*args: Any) -> Any:
            closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
            flat = jax.tree_util.tree_leaves(args)
            out = self.evaluate(closed.jaxpr, closed.consts, flat)
            return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), out)

        return ruled

    def evaluate(self, jaxpr: Any, consts: list[Any], args: list[Any]) -> list[Any]:
        env: dict[Any, Any] = {}

        def read(v: Any) -> Any:
            return v.val if type(v).__name__ == "Literal" else env[v]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value in zip(jaxpr.invars, args, strict=True):
            env[var] = value
        for eqn in jaxpr.eqns:
            values = [read(v) for v in eqn.invars]
            sub = _sub_jaxpr(eqn)
            if _is_relu(eqn):
                self.replaced += 1
                outs = [self.relu(values[0])]
            elif sub is not None:
                outs = self.evaluate(sub.jaxpr, sub.consts, values)
            else:
                bound = eqn.primitive.get_bind_params(eqn.params)
                # JAX < 0.5 returns (subfunctions, params); later versions the params alone.
                subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
                context = getattr(getattr(eqn, "ctx", None), "manager", None) or contextlib.nullcontext()
                with context:
                    outs = eqn.primitive.bind(*subfuns, *values, **params)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
            for var, value in zip(eqn.outvars, outs, strict=True):
                if type(var).__name__ != "DropVar":
                    env[var] = value
        return [read(v) for v in jaxpr.outvars]


# -- the pure functions of the passes (module level: they hold no adapter) ------------------------
def _forward(run: Callable[..., Any], output: Any, params: Any, x: Any) -> Any:
    return _float32(select_output(run(params, x), output, is_array))


def _capture(run: Callable[..., Any], output: Any, layer: str, params: Any, x: Any, delta: Any) -> tuple[Any, Any]:
    box: list[Any] = []

    def tap(out: Any) -> Any:
        if not is_array(out):
            raise LayerError(
                f"layer {layer!r} returns {type(out).__name__}, not a tensor; pick a layer with a "
                "single tensor (array) output"
            )
        box.append(out)
        return out if delta is None else out + delta.astype(out.dtype)

    outputs = _float32(select_output(run(params, x, {layer: tap}), output, is_array))
    if not box:
        raise LayerError(f"layer {layer!r} was not called by the model")
    return outputs, _float32(box[-1])


def _without_delta(capture: Callable[..., Any], params: Any, x: Any) -> tuple[Any, Any]:
    return capture(params, x, None)


def _weighted_gradient(forward: Callable[..., Any], params: Any, x: Any, weights: Any) -> tuple[Any, Any]:
    """The built-in score of each row and its gradient with respect to ``x``."""

    def scored(z: Any) -> tuple[Any, Any]:
        score = weighted_score(ep.astensor(forward(params, z)), ep.astensor(weights)).raw
        return jnp.sum(score), score

    (_, score), grad = jax.value_and_grad(scored, has_aux=True)(x)
    return score, grad


def _weighted_layer_gradient(
    capture: Callable[..., Any], shape: tuple[int, ...], params: Any, x: Any, weights: Any
) -> tuple[Any, Any, Any]:
    """Activations, the built-in score's gradient with respect to them, and the outputs."""

    def scored(delta: Any) -> tuple[Any, Any]:
        outputs, acts = capture(params, x, delta)
        score = weighted_score(ep.astensor(outputs), ep.astensor(weights)).raw
        return jnp.sum(score), (acts, outputs)

    zeros = jnp.zeros((x.shape[0], *shape), dtype=jnp.float32)
    (_, (acts, outputs)), grad = jax.value_and_grad(scored, has_aux=True)(zeros)
    return acts, _float32(grad), outputs


def _substituted(run: Callable[..., Any], output: Any, layer: str, params: Any, x: Any, given: Any) -> Any:
    """The outputs with ``layer``'s output replaced by ``given``."""
    produced: list[tuple[int, ...]] = []

    def replace(out: Any) -> Any:
        produced.append(tuple(out.shape))
        check_replacement(layer, tuple(out.shape), tuple(given.shape))
        return given.astype(out.dtype)

    outputs = _float32(select_output(run(params, x, {layer: replace}), output, is_array))
    if not produced:
        raise LayerError(f"layer {layer!r} was not called by the model")
    return outputs


class _Traced:
    """A ``jax.jit`` pass, how many times it ran, and the ReLU rule's evaluation it was traced
    under (which counts the ReLUs it replaced)."""

    def __init__(self, fn: Callable[..., Any], evaluation: _RuledEvaluation | None) -> None:
        self.fn, self.evaluation = fn, evaluation
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


# -- the adapter --------------------------------------------------------------------------------
class JaxAdapter(ModelAdapter):
    """Adapter for JAX functions and Flax models (see the module documentation).

    Arrays are immutable (no in-place accumulators); random draws use ``jax.random`` keys
    from the seed; an XLA ``RESOURCE_EXHAUSTED`` error (device out of memory) is retried on
    halves of the batch.
    """

    framework = "jax"
    display_name = "JAX"
    mutable_tensors = False

    def __init__(self, model: Any, program: Program | None = None) -> None:
        program = program or program_for(model)
        if program is None:  # a plain Python function, declared a JAX model with framework="jax"
            if not callable(model):
                raise UnsupportedModelError(f"a JAX model is a callable, got {type(model).__name__}")
            program = FunctionProgram(model, None, -1, {})
        super().__init__(model, channel_axis=program.channel_axis)
        self.program = program
        self.supports_layers = program.has_layers
        self._compiled = _compiled_for(program, model)
        self._spec: Any = None
        self._default_layers: dict[tuple[Any, ...], str] = {}
        self._rule: _RuledEvaluation | None = None
        self._rule_name = ""

    # -- data --------------------------------------------------------------------------
    @property
    def device(self) -> Any:
        """The device of the model's first parameter (JAX's default device without any)."""
        for leaf in jax.tree_util.tree_leaves(self.program.params):
            if is_array(leaf):
                return next(iter(leaf.devices()))
        return jax.devices()[0]

    def is_native(self, x: Any) -> bool:
        return is_array(x)

    def to_model(self, x: Any) -> ep.Tensor:
        if is_array(x):
            if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
                raise InputError(f"expected real numbers, got an array of dtype {x.dtype}")
            raw = jax.device_put(x.astype(jnp.float32), self.device)
        else:
            raw = jax.device_put(float32_array(x), self.device)
        self._spec = jax.ShapeDtypeStruct(raw.shape, raw.dtype)
        return ep.astensor(raw)

    def restore(self, t: ep.Tensor, like: Any) -> Any:
        if is_array(like):
            return jax.device_put(t.raw, next(iter(like.devices())))
        return as_type_of(np.array(t.raw), like)  # NumPy (writable), or another framework's tensor

    def from_numpy(self, like: ep.Tensor, a: np.ndarray) -> ep.Tensor:
        return ep.astensor(jax.device_put(np.ascontiguousarray(a), next(iter(like.raw.devices()))))

    def random_normal(self, like: ep.Tensor, shape: tuple[int, ...], seed: int | None) -> ep.Tensor:
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        key = jax.device_put(jax.random.PRNGKey(seed), next(iter(like.raw.devices())))
        return ep.astensor(jax.random.normal(key, shape, dtype=jnp.float32))

    # -- pure functions of a pass, and their compiled forms ----------------------------
    def _output_key(self) -> Any:
        try:
            hash(self.output)
        except TypeError:
            return ("unhashable", id(self.output))
        return self.output

    def _ruled(self, pure: Callable[..., Any]) -> Callable[..., Any]:
        """``pure`` with the ReLU rule in force (before it is differentiated)."""
        return pure if self._rule is None else self._rule(pure)

    def _forward_pure(self) -> Callable[..., Any]:
        """``(params, x) -> outputs``: a plain function (no reference to the adapter)."""
        return self._ruled(functools.partial(_forward, self.program.structure().run, self.output))

    def _capture_pure(self, layer: str) -> Callable[..., Any]:
        """``(params, x, delta) -> (outputs, activations)``: ``layer``'s output captured, with
        ``delta`` (``None`` or like the activations) added to it, so the gradient with respect
        to ``delta`` is the activations' gradient."""
        return self._ruled(functools.partial(_capture, self.program.structure().run, self.output, layer))

    def _jitted(self, path: tuple[Any, ...], make: Callable[[], Callable[..., Any]]) -> _Traced:
        """``jax.jit(make())``, cached under the model by ``path``, the output selector and the
        ReLU rule in force (a rule's passes are traced apart and never leak)."""
        key = (*path, self._output_key(), self._rule_name)
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = _Traced(jax.jit(make()), self._rule)
        return fn

    def _forward_fn(self) -> _Traced:
        return self._jitted(("forward",), self._forward_pure)

    def _capture_fn(self, layer: str) -> _Traced:
        capture = self._capture_pure
        return self._jitted(("capture", layer), lambda: functools.partial(_without_delta, capture(layer)))

    def _call(self, fn: Callable[..., Any], x: ep.Tensor, *args: Any, doing: str = "ran") -> Any:
        with self.calling_model(x, doing):
            return fn(self.program.params, x.raw, *args)

    # -- model -------------------------------------------------------------------------
    def is_out_of_memory(self, exc: BaseException) -> bool:
        # XLA reports an exhausted device (or host) allocator as RESOURCE_EXHAUSTED in an
        # XlaRuntimeError / JaxRuntimeError; MemoryError for host arrays.
        if isinstance(exc, MemoryError):
            return True
        return "RuntimeError" in type(exc).__name__ and "RESOURCE_EXHAUSTED" in str(exc)

    def forward_pass(self, x: ep.Tensor) -> ep.Tensor:
        return ep.astensor(self._call(self._forward_fn(), x))

    def differentiable_forward(self, x: ep.Tensor) -> ep.Tensor:
        return ep.astensor(self._call(self._forward_fn(), x))

    def value_and_grad_pass(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        # Any Python score: differentiated by tracing it (the model's passes inside are compiled).
        def scored(raw: Any) -> tuple[Any, Any]:
            value = fn(ep.astensor(raw)).raw
            return jnp.sum(value), value

        (_, value), grad = jax.value_and_grad(scored, has_aux=True)(x.raw)
        return ep.astensor(value), ep.astensor(grad)

    def weighted_value_and_grad_pass(self, x: ep.Tensor, weights: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        forward = self._forward_pure
        fn = self._jitted(("gradient",), lambda: functools.partial(_weighted_gradient, forward()))
        score, grad = self._call(fn, x, weights.raw, doing="differentiated")
        return ep.astensor(score), ep.astensor(grad)

    def differentiable_activations(self, x: ep.Tensor, layer: str) -> tuple[ep.Tensor, ep.Tensor]:
        self._check_layers()
        outputs, acts = self._call(self._capture_fn(self.resolve_layer(layer)), x)
        return ep.astensor(acts), ep.astensor(outputs)

    def layer_activations_pass(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        self._check_layers()
        name = self.resolve_layer(layer)
        if score_of is None:
            outputs, acts = self._call(self._capture_fn(name), x)
            return ep.astensor(acts), None, ep.astensor(outputs)
        # Any Python score: traced around the compiled capture.
        capture = self._jitted(("capture+delta", name), lambda: self._capture_pure(name))
        zeros = jnp.zeros(self._activation_shape(x, name), dtype=jnp.float32)
        params = self.program.params

        def scored(delta: Any) -> tuple[Any, Any]:
            outputs, acts = capture(params, x.raw, delta)
            score = score_of(ep.astensor(outputs)).raw
            return jnp.sum(score), (acts, outputs)

        with self.calling_model(x, "differentiated"):
            (_, (acts, outputs)), grad = jax.value_and_grad(scored, has_aux=True)(zeros)
        return ep.astensor(acts), ep.astensor(_float32(grad)), ep.astensor(outputs)

    def weighted_layer_activations_pass(
        self, x: ep.Tensor, layer: str, weights: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        self._check_layers()
        name = self.resolve_layer(layer)
        shape = self._activation_shape(x, name)[1:]
        capture = self._capture_pure
        fn = self._jitted(
            ("layer gradient", name, shape), lambda: functools.partial(_weighted_layer_gradient, capture(name), shape)
        )
        acts, grad, outputs = self._call(fn, x, weights.raw, doing="differentiated")
        return ep.astensor(acts), ep.astensor(grad), ep.astensor(outputs)

    def _activation_shape(self, x: ep.Tensor, layer: str) -> tuple[int, ...]:
        """The shape of ``layer``'s output for ``x``: one abstract trace per input shape."""
        key = ("shape", layer, tuple(x.shape))
        shape = self._compiled.get(key)
        if shape is None:
            capture = functools.partial(_capture, self.program.run, None, layer)
            with self.calling_model(x):
                _, acts = jax.eval_shape(capture, self.program.params, jax.ShapeDtypeStruct(x.shape, x.raw.dtype), None)
            shape = self._compiled[key] = tuple(int(d) for d in acts.shape)
        return shape

    def forward_with_activations_pass(self, x: ep.Tensor, layer: str, activations: ep.Tensor) -> ep.Tensor:
        self._check_layers()
        name = self.resolve_layer(layer)
        run, output = self.program.structure().run, self.output
        fn = self._jitted(("replace", name), lambda: functools.partial(_substituted, run, output, name))
        return ep.astensor(self._call(fn, x, activations.raw))

    def _check_layers(self) -> None:
        if not self.supports_layers:
            raise UnsupportedModelError(self.no_layers_message())

    def no_layers_message(self) -> str:
        return (
            "this JAX function has no named inner layers (CAM methods need them): pass a Flax "
            "model (nnx.Module, or a Linen module with its variables) — or use a gradient or "
            "black-box method"
        )

    # -- ReLU rules ---------------------------------------------------------------------
    @contextlib.contextmanager
    def relu_backward(self, rule: str) -> Iterator[None]:
        """ReLU backward rules for the block (see :meth:`ModelAdapter.relu_backward`).

        The passes traced inside the block evaluate the model's traced program with every
        ``jax.nn.relu`` (``flax.linen.relu``, ``nnx.relu``, ``jax.nn.relu`` inside jitted
        functions alike) replaced by a ``jax.custom_vjp`` ReLU with the rule's backward pass;
        they are cached apart from the ordinary passes. ``jnp.maximum(x, 0)`` written out,
        leaky or capped ReLUs and other activations are not reached; a block whose passes
        met no ReLU raises :class:`~xai_toolbox.errors.UnsupportedModelError` at its end.
        """
        rule = check_relu_rule(rule)
        previous = (self._rule, self._rule_name)
        calls = {key: fn.calls for key, fn in self._compiled.items() if isinstance(fn, _Traced)}
        self._rule, self._rule_name = _RuledEvaluation(_relu_rule(rule)), rule
        try:
            yield
        finally:
            self._rule, self._rule_name = previous
        used = [
            fn for key, fn in self._compiled.items()
            if isinstance(fn, _Traced) and fn.evaluation is not None and fn.calls > calls.get(key, 0)
        ]
        if used and not any(fn.evaluation.replaced for fn in used):
            raise UnsupportedModelError(
                f"{rule!r} ReLU rules found no ReLU to apply to in this JAX model: it applies no "
                "jax.nn.relu (flax's nn.relu / nnx.relu) — other activations, or a ReLU written as "
                "jnp.maximum(x, 0), are not overridden — so Guided Backprop and DeconvNet would only "
                "give its plain gradient; use saliency instead"
            )

    # -- layers --------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return self.program.layer_names(self._spec)

    def default_layer(self, x: ep.Tensor) -> str:
        self._check_layers()
        key = (tuple(x.shape[1:]), self._output_key())
        if key not in self._default_layers:
            spec = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.raw.dtype)
            with self.calling_model(x[:1]):
                records = trace_records(self.program, spec)
            tokens = token_layers(records, (int(x.shape[1]), int(x.shape[2])), _norms(records)) if x.ndim == 4 else []
            chosen = self._informative(x, tokens) if tokens else pick_default_layer(records, self.channel_axis)
            if chosen is None:
                raise LayerError(
                    "the model has no layer with a spatial (N, H, W, C) output; a CAM method needs "
                    "one — pass layer= explicitly or use a gradient/black-box method"
                )
            self._default_layers[key] = chosen
        return self._default_layers[key]

    def _informative(self, x: ep.Tensor, candidates: list[tuple[str, int]]) -> str:
        """The last token layer whose patch tokens the outputs depend on (the gradient of the
        outputs' sum at each candidate, on one input)."""
        prefix = dict(candidates)
        largest: dict[str, float] = {}
        for name, _ in candidates:
            _, grad, _ = self.layer_activations_pass(x[:1], name, lambda outputs: outputs.sum(axis=1))
            largest[name] = float(grad[:, prefix[name] :].abs().max().item())
        return last_informative(candidates, largest)

    # -- weights -------------------------------------------------------------------------
    def _trainable(self) -> list[tuple[str, str, Any]]:
        if isinstance(self.program, FunctionProgram) and not self.program.with_params:
            raise UnsupportedModelError(
                "a JAX function without parameters exposes no weights (model randomisation needs "
                "them): pass xt.JaxModel(fn, params) or a Flax model"
            )
        return _weight_leaves(self.program.trainable(self.program.params))

    def weight_layers(self) -> list[str]:
        """The layers owning trainable parameters, by path (Flax: the module's path), in order."""
        return list(dict.fromkeys(layer for layer, _, _ in self._trainable()))

    def reinitialize(self, layers: list[str], draw: Draw) -> None:
        """New values for the layers' parameters (kernels drawn in the canonical layout,
        ``(out, in, *k)``, and stored in Flax's ``(*k, in, out)``); the adapter's model is
        replaced by one of the same kind holding them (arrays are immutable)."""
        leaves = self._trainable()
        replaced: dict[int, Any] = {}
        for name in layers:
            own = [leaf for layer, _, leaf in leaves if layer == name]
            shapes = [canonical_shape(tuple(int(d) for d in leaf.shape)) for leaf in own]
            for leaf, values in zip(own, draw(shapes), strict=True):
                replaced[id(leaf)] = jnp.asarray(keras_layout(np.asarray(values)), dtype=leaf.dtype)
        trainable = self.program.trainable(self.program.params)
        new = jax.tree_util.tree_map(lambda leaf: replaced.get(id(leaf), leaf), trainable)
        params = self.program.with_trainable(self.program.params, new)
        self.program.params = params
        self.model = self.program.rebuilt(params)

    def clone(self) -> JaxAdapter:
        """An adapter of a copy of the model (the same arrays: they are immutable; re-initialising
        the copy replaces them there only)."""
        params = jax.tree_util.tree_map(lambda leaf: leaf, self.program.params)
        model = self.program.rebuilt(params)
        adapter = JaxAdapter(model)
        adapter.output = self.output
        adapter._spec = self._spec
        return adapter

    def model_state(self) -> Any:
        """The parameters' bytes (a JAX model has no training flag or stored gradients; an NNX
        model's state is read from the model itself)."""
        nnx = sys.modules.get("flax.nnx")
        state = nnx.state(self.model) if nnx is not None and isinstance(self.model, nnx.Module) else self.program.params
        return tuple(_host_bytes(leaf) for leaf in jax.tree_util.tree_leaves(state) if hasattr(leaf, "shape"))

    def last_parameter(self) -> Any:
        leaves = jax.tree_util.tree_leaves(self.program.params)
        return leaves[-1] if leaves else None


def _host_bytes(leaf: Any) -> bytes:
    """An array's bytes; a random key's (NNX keeps ``Rngs`` keys in its state) through its data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf).tobytes()


def _norms(records: list[tuple[str, tuple[int, ...]]]) -> set[str]:
    return {name for name, _ in records if "norm" in name.rsplit("/", 1)[-1].lower()}


__all__ = ["JaxAdapter", "JaxModel", "Program", "is_jax_model", "program_for", "trace_records"]
