"""TensorFlow/Keras 3 adapter: Sequential, functional, subclassed and nested models, NHWC inputs.

The Keras backend TensorFlow: compiled passes (``tf.function``) and ``tf.GradientTape``. What
the Keras backends share (layers, names, weights) is in :mod:`.keras_common`."""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import tensorflow as tf

from ..errors import InputError, LayerError, ParameterError, XaiToolboxError
from .adapter import (
    ModelAdapter,
    ScoreOf,
    as_type_of,
    check_relu_rule,
    check_replacement,
    finish_built,
    float32_array,
    last_informative,
    select_output,
    split_built,
    tracing,
    weighted_score,
)
from .keras_common import (
    CallPatch,
    KerasLayers,
    ReluRules,
    check_one_input,
    no_relu_error,
    patch_lock,
    relu_targets,
    walk,
)

# Names kept for the callers that import them from here.
_walk = walk
_CallPatch = CallPatch

# Inner layers are reached by temporarily wrapping ``layer.call`` on the instance, which works
# for every kind of Keras model (a functional sub-model cannot be cut out of a subclassed one).
# The wrapping is per layer object, so captures are serialised (one lock for every backend).
_patch_lock = patch_lock


class _Compiled:
    """The compiled forwards of one model, shared by all of its adapters.

    ``xt.explain`` in a loop builds a new adapter per call; without sharing, every call would
    trace again (slow, and TensorFlow warns about retracing).
    """

    def __init__(self) -> None:
        self.functions: dict[tuple[Any, ...], Any] = {}
        self.traces = 0


# Weak keys, and the functions hold the model weakly, so a model that is dropped (e.g. the
# copies a randomisation test makes on every call) is collected with its traces.
_compiled_by_model: weakref.WeakKeyDictionary[Any, _Compiled] = weakref.WeakKeyDictionary()


def _compiled_for(model: Any) -> _Compiled:
    with _patch_lock:
        try:
            shared = _compiled_by_model.get(model)
            if shared is None:
                shared = _compiled_by_model[model] = _Compiled()
        except TypeError:  # not hashable or not weakly referenceable: this adapter only
            shared = _Compiled()
    return shared


class _Forward:
    """``model(x, training=False)`` as a tensor, holding the model and its cache weakly.

    A callable object, not a closure: TensorFlow counts retracings per code object, so closures
    of many models (the copies above) would share one count and warn; and what its warnings
    keep (log handlers hold their arguments) must not keep models alive.
    """

    def __init__(self, model: Any, shared: _Compiled | None, select: Callable[[Any], Any] | None = None) -> None:
        self.model_ref = weakref.ref(model)
        self.shared_ref = None if shared is None else weakref.ref(shared)
        # The adapter's output selection (dict outputs, output=): a plain function, so the
        # compiled pass does not keep the adapter, hence the model, alive.
        self.select = select or functools.partial(select_output, selector=None, is_tensor=tf.is_tensor)

    def _model(self) -> Any:
        """The model, counting a trace (Python only runs here while tracing, or eagerly)."""
        shared = None if self.shared_ref is None else self.shared_ref()
        if shared is not None:
            shared.traces += 1
        return self.model_ref()

    def outputs(self, model: Any, x: Any) -> Any:
        """The selected output of ``model`` on ``x``, as a tensor."""
        return _float32(tf.convert_to_tensor(self.select(model(x, training=False))))

    def __call__(self, x: Any) -> Any:
        return self.outputs(self._model(), x)


class _WeightedGradient(_Forward):
    """The built-in score ``Σ_k outputs · weights`` of each row and its gradient with respect
    to ``x``, tape inside: compiled, the forward and the backward pass form one graph, and
    no gradient of the weights is computed."""

    def __call__(self, x: Any, weights: Any) -> Any:
        model = self._model()
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            outputs = self.outputs(model, x)
            if outputs.shape.rank != 2:  # no class axis: the caller raises (an error raised
                return outputs, None, False  # while tracing would come out wrapped by AutoGraph)
            score = weighted_score(ep.astensor(outputs), ep.astensor(weights)).raw
        return score, tape.gradient(score, x), True


class _LayerPass(_Forward):
    """One inner layer's activations and the model outputs, with the gradient of a score with
    respect to the activations when one is given.

    The layer is reached by wrapping its ``call`` while the model runs, so compiled (with the
    built-in score's ``weights``, or none), the wrapping happens while tracing and the graph
    keeps the computation. Compiled without AutoGraph, so errors raised here come out as
    they are.
    """

    def __init__(
        self, model: Any, shared: _Compiled | None, layer: Any, name: str, select: Callable[[Any], Any] | None = None
    ) -> None:
        super().__init__(model, shared, select)
        self.layer_ref = weakref.ref(layer)
        self.name = name

    def __call__(self, x: Any, weights: Any = None) -> Any:
        if weights is None:
            return self.run(x, None)
        return self.run(x, lambda outputs: weighted_score(outputs, ep.astensor(weights)))

    def run(
        self, x: Any, score_of: ScoreOf | None, calling: Callable[[str], Any] = lambda _: contextlib.nullcontext()
    ) -> tuple[Any, Any, Any]:
        """``calling(doing)`` wraps the model's forward (``"ran"``) and backward
        (``"differentiated"``) passes, not the score: its errors are the caller's own."""
        model, layer = self._model(), self.layer_ref()
        captured: list[Any] = []
        owner = threading.get_ident()
        with tf.GradientTape(watch_accessed_variables=False) as tape:

            def capture(out: Any) -> Any:
                if threading.get_ident() != owner:  # another thread's eager call through this layer
                    return out
                if not tf.is_tensor(out):
                    raise LayerError(
                        f"layer {self.name!r} returns {type(out).__name__}, not a tensor; "
                        "pick a layer with a single tensor output"
                    )
                tape.watch(out)
                captured[:] = [out]
                return out

            with _patch_lock, _CallPatch(layer, capture), calling("ran"):
                outputs = self.outputs(model, x)
            if not captured:
                raise LayerError(f"layer {self.name!r} was not called by the model")
            if score_of is None:
                return _float32(captured[0]), None, outputs
            score = score_of(ep.astensor(outputs)).raw
        with calling("differentiated"):
            grad = tape.gradient(score, captured[0])
        if grad is None:
            raise LayerError(f"the score does not depend on layer {self.name!r}")
        return _float32(captured[0]), _float32(grad), outputs


def _float32(t: Any) -> Any:
    """Outputs, activations and gradients of a mixed-precision model (float16/bfloat16
    compute, as ``keras.mixed_precision`` sets up) as float32, the dtype the toolbox works in."""
    if t.dtype in (tf.float16, tf.bfloat16):
        return tf.cast(t, tf.float32)
    return t


class _Substituted(_Forward):
    """The model outputs with one layer's output replaced by given activations; compiled,
    the layer's ``call`` is wrapped while tracing (without AutoGraph, so shape errors come out
    as they are)."""

    def __init__(
        self, model: Any, shared: _Compiled | None, layer: Any, name: str, select: Callable[[Any], Any] | None = None
    ) -> None:
        super().__init__(model, shared, select)
        self.layer_ref = weakref.ref(layer)
        self.name = name

    def __call__(self, x: Any, activations: Any) -> Any:
        model, layer = self._model(), self.layer_ref()
        owner = threading.get_ident()

        produced: list[tuple[int, ...]] = []

        def substitute(out: Any) -> Any:
            if threading.get_ident() != owner or not tf.is_tensor(out):
                return out
            produced.append(tuple(out.shape))
            if tuple(out.shape[1:]) != tuple(activations.shape[1:]):
                return out  # reported below: Keras would wrap an error raised inside a layer
            return tf.cast(activations, out.dtype)

        with _patch_lock, _CallPatch(layer, substitute):
            outputs = self.outputs(model, x)
        if not produced:
            raise LayerError(f"layer {self.name!r} was not called by the model (or returns no tensor)")
        check_replacement(self.name, produced[0], tuple(activations.shape))
        return outputs


#: Built passes whose tensors hold at least this many values per row (a 64×64 RGB image has
#: 12 288) build their batch with XLA (``jit_compile``): the element-wise work fuses into one
#: loop (measured on 2 CPU cores: an Occlusion chunk of 64 images of 112×112 built in 2 ms
#: instead of 13–14 ms, traced or eager — TensorFlow's kernels broadcasting both operands are
#: slow). XLA compiles once per concrete shape (about 50–80 ms, cached for the process), which
#: only pays for large inputs; smaller ones run traced.
XLA_BUILD_MIN_VALUES = 4096

#: The cache entry of a built pass that runs eagerly (it could not be compiled).
_EAGER = "eager"


def _raw(value: Any, what: str) -> Any:
    """An EagerPy tensor, or a tuple of them, as native tensors."""
    if isinstance(value, ep.Tensor):
        return value.raw
    if isinstance(value, tuple | list) and all(isinstance(v, ep.Tensor) for v in value):
        return tuple(v.raw for v in value)
    raise ParameterError(f"{what} must return an EagerPy tensor or a tuple of them, got {type(value).__name__}")


def _eager(value: Any) -> Any:
    return tuple(ep.astensor(v) for v in value) if isinstance(value, tuple | list) else ep.astensor(value)


def _pass_key(specs: tuple[Any, ...], output_key: Any, compile: bool, path: Any) -> tuple[Any, ...]:
    """The cache key of a compiled pass: its inputs' shapes (batch aside) and dtypes, the output
    selector, the compile flag and the path."""
    return (*((tuple(sp.shape[1:]), sp.dtype.name) for sp in specs), output_key, compile, path)


class _ForwardOf:
    """The adapter's compiled forward pass for model inputs like a given tensor (the
    ``"forward"`` path of ``KerasAdapter._call``, made if missing): built passes call it, so the
    model is traced once per input shape whichever pass needs it first, and a built pass traces
    only its own steps. Holds the model weakly, like the passes it makes."""

    def __init__(self, functions: dict[Any, Any], model: Any, shared: _Compiled, select: Callable[[Any], Any],
                 output_key: Any, compile: bool) -> None:
        self.functions, self.select, self.output_key, self.compile = functions, select, output_key, compile
        self.model_ref, self.shared_ref = weakref.ref(model), weakref.ref(shared)
        #: Keys of the passes made here by the trace under way (dropped if it fails).
        self.made: list[Any] = []

    def __call__(self, inputs: Any) -> Any:
        spec = tf.TensorSpec((None, *inputs.shape[1:]), inputs.dtype)
        key = _pass_key((spec,), self.output_key, self.compile, "forward")
        fn = self.functions.get(key)
        if fn is None:
            fn = tf.function(
                _Forward(self.model_ref(), self.shared_ref(), self.select), input_signature=[spec],
                jit_compile=self.compile or None,
            )
            self.functions[key] = fn
            self.made.append(key)
        return fn(inputs)


class _Built:
    """``build`` → model → ``finish`` of :meth:`ModelAdapter.forward_built` as one function,
    traced once per key and input shapes: ``build`` (and ``finish``) traced here, compiled by
    XLA when ``xla``, the model through the adapter's own compiled forward (see
    :class:`_ForwardOf`). The functions themselves are not kept: each call sets them for its
    thread, so a cached pass holds no closure of a method call (nor the tensors or objects it
    might reach), and a trace uses the functions of the call that traced it (equal for equal
    keys)."""

    def __init__(self, forward_of: _ForwardOf, xla: bool) -> None:
        self.forward_of = forward_of
        self.pending = threading.local()
        self.xla = xla
        if xla:
            self.build_part = tf.function(self._build, jit_compile=True, autograph=False)
        else:
            self.build_part = tf.autograph.experimental.do_not_convert(self._build)
        # The finishing steps are small (scores, and values per input): traced, never worth
        # an XLA compilation per shape.
        self.finish_part = tf.autograph.experimental.do_not_convert(self._finish)

    def _build(self, *args: Any) -> Any:
        with tracing():
            return _raw(self.pending.build(*(ep.astensor(a) for a in args)), "build")

    def _finish(self, outputs: Any, *extras: Any) -> Any:
        with tracing():
            return _raw(self.pending.finish(ep.astensor(outputs), *(ep.astensor(e) for e in extras)), "finish")

    def __call__(self, *args: Any) -> Any:
        shared = self.forward_of.shared_ref()
        if shared is not None:  # Python runs here only while tracing: one trace of this pass
            shared.traces += 1
        inputs, extras = split_built(self.build_part(*args))
        outputs = self.forward_of(inputs)
        if self.pending.finish is None:
            result = finish_built(None, outputs, extras)
        else:
            result = self.finish_part(outputs, *extras)
        return result, tf.reduce_sum(outputs) * 0.0

    def run(self, fn: Any, build: Callable[..., Any], finish: Callable[..., Any] | None, tensors: Any) -> Any:
        """``fn`` (this pass, compiled) on ``tensors`` with this call's functions."""
        self.pending.build, self.pending.finish = build, finish
        try:
            result, check = fn(*(t.raw for t in tensors))
        finally:
            self.pending.build = self.pending.finish = None
        return _eager(result), ep.astensor(check)


def _toolbox_error(exc: BaseException) -> XaiToolboxError | None:
    """The first toolbox error in ``exc``'s chain of causes and contexts, innermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    found = [e for e in reversed(chain) if isinstance(e, XaiToolboxError)]
    return found[0] if found else None


# -- ReLU backward rules (Guided Backprop, DeconvNet) ------------------------------------------
# Passes compiled under a rule, per model (its ``_Compiled``) and rule: a rule never leaks into
# the ordinary traces, nor is it ignored because an ordinary trace was cached first.
_rule_compiled: weakref.WeakKeyDictionary[_Compiled, dict[str, dict[tuple[Any, ...], Any]]] = (
    weakref.WeakKeyDictionary()
)


def _relu_with_rule(rule: str) -> Callable[[Any], Any]:
    """``relu`` forwards; backwards ``relu(R)``, gated by ``1[z > 0]`` for the guided rule."""
    guided = rule == "guided"

    @tf.custom_gradient
    def relu(z: Any) -> Any:
        out = tf.nn.relu(z)

        def backward(upstream: Any) -> Any:
            passed = tf.nn.relu(upstream)
            return passed * tf.cast(out > 0, passed.dtype) if guided else passed

        return out, backward

    return relu


class KerasAdapter(KerasLayers):
    """Adapter for Keras 3 models on the TensorFlow backend (channels-last inputs).

    Layers are addressed by name; layers inside nested sub-models by their own name when it
    is unique, or by the path ``"outer/inner"``.
    """

    framework = "tf"
    display_name = "TensorFlow/Keras"
    # compile=True: the compiled passes are XLA-compiled too (jit_compile); Keras layers are
    # channels-last (NHWC) already, so there is no layout to choose.
    supports_compile = True
    memory_formats = ("auto", "channels_last")

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._shared = _compiled_for(model)
        self._compiled = self._shared.functions

    @property
    def traces(self) -> int:
        """Number of ``tf.function`` traces of this model's forward so far, by any adapter
        (benchmarks report it; chunks and new adapters for the same model must not retrace)."""
        return self._shared.traces

    # -- data --------------------------------------------------------------------------
    def is_native(self, x: Any) -> bool:
        return tf.is_tensor(x) or isinstance(x, tf.Variable)

    def to_model(self, x: Any) -> ep.Tensor:
        check_one_input(self.model)
        if not self.is_native(x):
            return ep.astensor(tf.convert_to_tensor(float32_array(x)))
        if not (x.dtype.is_floating or x.dtype.is_integer or x.dtype.is_bool):
            raise InputError(f"expected real numbers, got a tensor of dtype {x.dtype.name}")
        return ep.astensor(tf.cast(x, tf.float32))

    def restore(self, t: ep.Tensor, like: Any) -> Any:
        if self.is_native(like):
            return t.raw
        return as_type_of(t.raw.numpy(), like)  # NumPy, or another framework's tensor

    def random_normal(self, like: ep.Tensor, shape: tuple[int, ...], seed: int | None) -> ep.Tensor:
        with tf.device(like.raw.device):
            if seed is None:
                return ep.astensor(tf.random.normal(shape, dtype=tf.float32))
            return ep.astensor(tf.random.stateless_normal(shape, seed=[seed, 0]))

    # -- model -------------------------------------------------------------------------
    def _call(self, raw: Any) -> Any:
        """The model on ``raw`` through a ``tf.function`` whose batch axis is unknown.

        One trace per input shape (batch excluded), so the chunks of a perturbation method,
        including a smaller last one, never retrace. Gradient tapes record through it. Models
        that cannot be traced fall back to eager calls.
        """
        spec = tf.TensorSpec((None, *raw.shape[1:]), raw.dtype)
        return self._compiled_call((spec,), "forward", lambda shared: _Forward(self.model, shared, self._select), raw)

    @property
    def _select(self) -> Callable[[Any], Any]:
        """This adapter's output selection as a plain function (no reference to the adapter)."""
        return functools.partial(select_output, selector=self.output, is_tensor=tf.is_tensor)

    def _output_key(self) -> Any:
        """The output selector in the keys of compiled passes (the selector itself, so a
        callable's id is never reused while its traces are cached)."""
        try:
            hash(self.output)
        except TypeError:
            return ("unhashable", id(self.output))
        return self.output

    def _compiled_call(
        self, specs: tuple[Any, ...], path: str, make: Callable[[_Compiled | None], Any], *args: Any,
        autograph: bool = True,
    ) -> Any:
        """``make(shared)`` as a ``tf.function`` over ``specs``, traced once and cached by input
        shapes and ``path``, run on ``args``; ``make(None)`` run eagerly for models that cannot
        be traced."""
        key = _pass_key(specs, self._output_key(), self.compile, path)
        fn = self._compiled.get(key)
        if fn is not None:
            return fn(*args)
        fn = tf.function(
            make(self._shared), input_signature=list(specs), autograph=autograph, jit_compile=self.compile or None
        )
        # Cached before the first run: running out of memory there must not cause a retrace.
        self._compiled[key] = fn
        with _patch_lock:  # never trace while another thread has a layer's call wrapped
            try:
                return fn(*args)
            except Exception as exc:
                # A toolbox error raised while tracing (e.g. an ambiguous output) comes out of
                # AutoGraph as a copy or a StagingError with the trace in its message: the
                # original is raised instead, and nothing half-traced is kept.
                original = _toolbox_error(exc)
                if original is not None:
                    self._compiled.pop(key, None)
                    raise original from None
                if not isinstance(exc, TypeError | NotImplementedError | tf.errors.OperatorNotAllowedInGraphError):
                    raise
                fn = self._compiled[key] = make(None)
                return fn(*args)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, tf.errors.ResourceExhaustedError | MemoryError)

    def forward_built_pass(
        self,
        key: Any,
        build: Callable[..., Any],
        tensors: tuple[ep.Tensor, ...],
        finish: Callable[..., Any] | None,
    ) -> tuple[Any, ep.Tensor | None]:
        """Build, model and finish as one ``tf.function`` (see :meth:`ModelAdapter.forward_built`):
        input signatures with unknown batch axes, so every chunk of a call, a smaller last one
        included, runs one trace per key and input shapes (cached with the model, as the other
        compiled passes), the model through the forward pass's own trace; the batch built by
        XLA for large inputs. A pass that cannot be
        compiled (or fails compiled) runs eagerly from then on, and the chunk is run again
        eagerly, so its error, if any, is the real one."""
        specs = tuple(
            tf.TensorSpec((None, *t.raw.shape[1:]) if t.ndim else (), t.raw.dtype) for t in tensors
        )
        full = (
            *((sp.shape.rank, tuple(sp.shape[1:]), sp.dtype.name) for sp in specs),
            self._output_key(), self.compile, ("built", key),
        )
        entry = self._compiled.get(full)
        if entry is None:
            with _patch_lock:  # never trace while another thread has a layer's call wrapped
                done = self._first_built(full, specs, build, tensors, finish)
            if done is not None:
                return done
        elif entry != _EAGER:
            try:
                return entry[0].run(entry[1], build, finish, tensors)
            except Exception as exc:
                if self.is_out_of_memory(exc):
                    raise
            self._compiled[full] = _EAGER  # failed compiled: eager from now on, this chunk too
        return ModelAdapter.forward_built_pass(self, key, build, tensors, finish)

    def _first_built(
        self, full: Any, specs: tuple[Any, ...], build: Callable[..., Any], tensors: tuple[ep.Tensor, ...],
        finish: Callable[..., Any] | None,
    ) -> tuple[Any, ep.Tensor] | None:
        """Trace and run a new built pass: its batch built by XLA for large inputs (unless the
        whole pass is XLA-compiled anyway), else, or if that fails, without; ``None`` (and the
        pass marked eager) if neither works."""
        large = any(sp.shape.rank >= 2 and math.prod(sp.shape[1:]) >= XLA_BUILD_MIN_VALUES for sp in specs)
        for xla in ((True, False) if large and not self.compile else (False,)):
            forward_of = _ForwardOf(self._compiled, self.model, self._shared, self._select, self._output_key(), self.compile)
            maker = _Built(forward_of, xla)
            fn = tf.function(maker, input_signature=list(specs), jit_compile=self.compile or None)
            # Cached before the first run: running out of memory there must not cause a retrace.
            self._compiled[full] = (maker, fn)
            try:
                return maker.run(fn, build, finish, tensors)
            except Exception as exc:
                if self.is_out_of_memory(exc):
                    raise
                for key in forward_of.made:  # a forward traced into a failed pass: not kept
                    self._compiled.pop(key, None)
        self._compiled[full] = _EAGER
        return None

    def forward_pass(self, x: ep.Tensor) -> ep.Tensor:
        with self.calling_model(x):
            return ep.astensor(self._call(x.raw))

    def differentiable_forward(self, x: ep.Tensor) -> ep.Tensor:
        with self.calling_model(x):
            return ep.astensor(self._call(x.raw))

    def differentiable_activations(self, x: ep.Tensor, layer: str) -> tuple[ep.Tensor, ep.Tensor]:
        # Eager, under the caller's tape: the layer's output is an ordinary taped tensor.
        target = self._layer(layer)
        captured: list[Any] = []
        owner = threading.get_ident()

        def capture(out: Any) -> Any:
            if threading.get_ident() != owner:  # another thread's eager call through this layer
                return out
            if not tf.is_tensor(out):
                raise LayerError(
                    f"layer {layer!r} returns {type(out).__name__}, not a tensor; "
                    "pick a layer with a single tensor output"
                )
            captured[:] = [out]
            return out

        with _patch_lock, _CallPatch(target, capture), self.calling_model(x):
            outputs = _float32(tf.convert_to_tensor(self.select_output(self.model(x.raw, training=False))))
        if not captured:
            raise LayerError(f"layer {layer!r} was not called by the model")
        return ep.astensor(_float32(captured[0])), ep.astensor(outputs)

    def value_and_grad_pass(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        leaf = x.raw
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(leaf)
            value = fn(ep.astensor(leaf)).raw
        with self.calling_model(x, "differentiated"):
            grad = tape.gradient(value, leaf)
        if grad is None:
            grad = tf.zeros_like(leaf)
        return ep.astensor(value), ep.astensor(grad)

    def weighted_value_and_grad_pass(self, x: ep.Tensor, weights: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
        raw = x.raw
        specs = (
            tf.TensorSpec((None, *raw.shape[1:]), raw.dtype),
            tf.TensorSpec((None, weights.shape[1]), weights.raw.dtype),
        )
        with self.calling_model(x, "differentiated"):
            value, grad, scored = self._compiled_call(
                specs, "gradient", lambda shared: _WeightedGradient(self.model, shared, self._select), raw, weights.raw
            )
        if not scored:  # the outputs came back instead of a score: raises the score's error
            weighted_score(ep.astensor(value), weights)
        if grad is None:  # the score does not depend on the inputs
            grad = tf.zeros_like(raw)
        return ep.astensor(value), ep.astensor(grad)

    @contextlib.contextmanager
    def relu_backward(self, rule: str) -> Iterator[None]:
        """ReLU backward rules for the block (see :meth:`ModelAdapter.relu_backward`).

        ``keras.layers.ReLU()`` layers (without ``max_value``, slope or threshold) and layers
        built with ``activation="relu"``, nested models included, compute with the rule's
        backward pass (``tf.custom_gradient``), in the calling thread only, and are put back
        exactly as they were. Inside the block this adapter's compiled passes come from a
        cache of their own, traced under the rule, so a rule never leaks into the ordinary
        traces or is ignored by them. ``tf.nn.relu`` called inside a custom ``call()``, ReLU6,
        leaky or thresholded ReLUs and other activations are not reached; a model without any
        reachable ReLU raises :class:`~xai_toolbox.errors.UnsupportedModelError` at once.
        """
        rule = check_relu_rule(rule)
        targets = relu_targets(self.model, (tf.nn.relu,))
        if not targets:
            raise no_relu_error(rule)
        ordinary = self._compiled
        with ReluRules(targets, _relu_with_rule(rule)):
            self._compiled = _rule_compiled.setdefault(self._shared, {}).setdefault(rule, {})
            try:
                yield
            finally:
                self._compiled = ordinary

    def layer_activations_pass(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        if score_of is None:
            return self._layer_pass(x, layer, None)
        # Any Python score: taped eagerly, the model included.
        layer_pass = _LayerPass(self.model, None, self._layer(layer), layer, self._select)
        acts, grad, outputs = layer_pass.run(x.raw, score_of, lambda doing: self.calling_model(x, doing))
        return ep.astensor(acts), ep.astensor(grad), ep.astensor(outputs)

    def weighted_layer_activations_pass(
        self, x: ep.Tensor, layer: str, weights: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        return self._layer_pass(x, layer, weights)

    def _layer_pass(
        self, x: ep.Tensor, layer: str, weights: ep.Tensor | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """The compiled :class:`_LayerPass` of ``layer``: one trace per input shape and layer
        (the layer is looked up by name only when tracing)."""
        raw = x.raw
        specs = [tf.TensorSpec((None, *raw.shape[1:]), raw.dtype)]
        args = [raw]
        if weights is not None:
            specs.append(tf.TensorSpec((None, weights.shape[1]), weights.raw.dtype))
            args.append(weights.raw)
        path = f"layer {layer}" + ("" if weights is None else " gradient")
        with self.calling_model(x, "ran" if weights is None else "differentiated"):
            acts, grad, outputs = self._compiled_call(
                tuple(specs), path,
                lambda shared: _LayerPass(self.model, shared, self._layer(layer), layer, self._select), *args,
                autograph=False,
            )
        return ep.astensor(acts), None if grad is None else ep.astensor(grad), ep.astensor(outputs)

    def forward_with_activations_pass(self, x: ep.Tensor, layer: str, activations: ep.Tensor) -> ep.Tensor:
        raw, acts = x.raw, activations.raw
        specs = (
            tf.TensorSpec((None, *raw.shape[1:]), raw.dtype),
            tf.TensorSpec((None, *acts.shape[1:]), acts.dtype),
        )
        with self.calling_model(x):
            outputs = self._compiled_call(
                specs, f"replace {layer}",
                lambda shared: _Substituted(self.model, shared, self._layer(layer), layer, self._select), raw, acts,
                autograph=False,
            )
        return ep.astensor(outputs)

    def _informative(self, x: ep.Tensor, candidates: list[tuple[str, int]]) -> str:
        """The last token layer whose patch tokens the outputs depend on: one eager pass on one
        input under a tape, the gradient of the outputs' sum taken at every candidate."""
        layers = dict(self._all_layers())
        captured: dict[str, Any] = {}
        owner = threading.get_ident()
        with tf.GradientTape(watch_accessed_variables=False, persistent=False) as tape:
            patches = []
            for name, _ in candidates:

                def keep(out: Any, name: str = name) -> Any:
                    if tf.is_tensor(out) and threading.get_ident() == owner:
                        tape.watch(out)
                        captured[name] = out
                    return out

                patches.append(_CallPatch(layers[name], keep))
            with _patch_lock, contextlib.ExitStack() as stack, self.calling_model(x[:1]):
                for patch in patches:
                    stack.enter_context(patch)
                outputs = tf.convert_to_tensor(self.select_output(self.model(x.raw[:1], training=False)))
                score = tf.reduce_sum(tf.cast(outputs, tf.float32))
        names = [name for name, _ in candidates if name in captured]
        grads = tape.gradient(score, [captured[n] for n in names])
        prefix = dict(candidates)
        largest = {
            n: 0.0 if g is None else float(tf.reduce_max(tf.abs(g[:, prefix[n] :])))
            for n, g in zip(names, grads, strict=True)
        }
        return last_informative(candidates, largest)
