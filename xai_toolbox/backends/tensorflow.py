"""TensorFlow/Keras 3 adapter: Sequential, functional, subclassed and nested models, NHWC inputs."""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import keras
import numpy as np
import tensorflow as tf

from ..errors import InputError, LayerError, UnsupportedModelError, XaiToolboxError
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

# Inner layers are reached by temporarily wrapping ``layer.call`` on the instance, which works
# for every kind of Keras model (a functional sub-model cannot be cut out of a subclassed one).
# The wrapping is per layer object, so captures are serialised.
_patch_lock = threading.RLock()


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


def _toolbox_error(exc: BaseException) -> XaiToolboxError | None:
    """The first toolbox error in ``exc``'s chain of causes and contexts, innermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    found = [e for e in reversed(chain) if isinstance(e, XaiToolboxError)]
    return found[0] if found else None


def _check_one_input(model: Any) -> None:
    """Models are explained with respect to one input tensor: a model that declares several
    is refused before any call (instead of an AutoGraph trace from deep inside Keras)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return
    if isinstance(inputs, list | tuple) and len(inputs) > 1:
        names = ", ".join(repr(getattr(t, "name", "?")) for t in inputs)
        raise UnsupportedModelError(
            f"the Keras model takes {len(inputs)} inputs ({names}); xai-toolbox explains a model "
            "with respect to one input tensor — wrap it in a model of one input that fixes the "
            "others, e.g. keras.Model(image, model([image, constant_inputs]))"
        )


def _walk_all(layer: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """:func:`_walk`, also into the sublayers of custom layers (a keras_hub encoder's blocks and
    their normalisations): every layer whose ``call`` can be captured, ``"outer/inner"``."""
    children = getattr(layer, "layers", None)
    if children is None:
        flatten = getattr(layer, "_flatten_layers", None)
        children = list(flatten(include_self=False, recursive=False)) if callable(flatten) else []
    for child in children or []:
        if isinstance(child, keras.layers.InputLayer):
            continue
        qualified = f"{prefix}{child.name}"
        yield qualified, child
        yield from _walk_all(child, qualified + "/")


def _walk(layer: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(qualified name, layer)`` for every layer below ``layer``, depth first, model order."""
    for child in getattr(layer, "layers", []) or []:
        qualified = f"{prefix}{child.name}"
        if isinstance(child, keras.layers.InputLayer):
            continue
        yield qualified, child
        yield from _walk(child, qualified + "/")


class _CallPatch:
    """Wrap ``layer.call`` on the instance for the duration of a ``with`` block."""

    def __init__(self, layer: Any, after: Callable[[Any], Any]) -> None:
        self.layer, self.after = layer, after

    def __enter__(self) -> None:
        layer = self.layer
        self._had_own = "call" in layer.__dict__
        self._own = layer.__dict__.get("call")
        original = layer.call

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.after(original(*args, **kwargs))

        layer.call = call

    def __exit__(self, *exc: object) -> None:
        if self._had_own:
            self.layer.call = self._own
        else:
            del self.layer.call


# -- ReLU backward rules (Guided Backprop, DeconvNet) ------------------------------------------
_RELU_ACTIVATIONS = (keras.activations.relu, keras.ops.relu, tf.nn.relu)

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


def _relu_targets(model: Any) -> list[tuple[Any, str]]:
    """``(layer, attribute)`` for every plain ReLU of the model, nested models included: the
    ``call`` of ``keras.layers.ReLU()`` layers (no ``max_value``, slope or threshold) and the
    ``activation`` of layers built with ``activation="relu"`` (``Dense``, ``Conv2D``,
    ``Activation``, ...)."""
    found: dict[int, tuple[Any, str]] = {}
    for _, layer in _walk(model):
        if isinstance(layer, keras.layers.ReLU):
            plain = layer.max_value is None and not layer.negative_slope and not layer.threshold
            if plain:
                found[id(layer)] = (layer, "call")
        elif any(getattr(layer, "activation", None) is f for f in _RELU_ACTIVATIONS):
            found[id(layer)] = (layer, "activation")
    return list(found.values())


class _RuledLayer:
    """One ReLU layer attribute (``call`` or ``activation``) replaced by a dispatcher: threads
    with a rule on it (a stack each, for nested blocks) run their rule, every other thread runs
    the original. Shared by all the blocks that overlap on the layer, restored by the last."""

    def __init__(self, layer: Any, attribute: str) -> None:
        self.layer, self.attribute = layer, attribute
        self.had_own, self.own = attribute in layer.__dict__, layer.__dict__.get(attribute)
        self.rules: dict[int, list[Callable[[Any], Any]]] = {}
        original = getattr(layer, attribute)

        def ruled(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            stack = self.rules.get(threading.get_ident())
            return stack[-1](inputs) if stack else original(inputs, *args, **kwargs)

        setattr(layer, attribute, ruled)

    def restore(self) -> None:
        if self.had_own:
            setattr(self.layer, self.attribute, self.own)
        else:
            delattr(self.layer, self.attribute)


# Patched layers by (id, attribute); only touched under ``_patch_lock``, so a rule's patches
# never interleave with another thread's ``_CallPatch`` (which holds it throughout).
_ruled_layers: dict[tuple[int, str], _RuledLayer] = {}


class _ReluRules:
    """The model's ReLUs computed by :func:`_relu_with_rule` for a ``with`` block, in the
    calling thread only, and put back exactly as they were by the last block that ends."""

    def __init__(self, targets: list[tuple[Any, str]], rule: str) -> None:
        self.targets, self.rule_fn = targets, _relu_with_rule(rule)
        self.thread = threading.get_ident()
        self.keys: list[tuple[int, str]] = []

    def __enter__(self) -> None:
        with _patch_lock:
            try:
                for layer, attribute in self.targets:
                    key = (id(layer), attribute)
                    ruled = _ruled_layers.get(key)
                    if ruled is None:
                        ruled = _ruled_layers[key] = _RuledLayer(layer, attribute)
                    ruled.rules.setdefault(self.thread, []).append(self.rule_fn)
                    self.keys.append(key)
            except BaseException:
                self._release()
                raise

    def __exit__(self, *exc: object) -> None:
        with _patch_lock:
            self._release()

    def _release(self) -> None:
        while self.keys:
            key = self.keys.pop()
            ruled = _ruled_layers[key]
            stack = ruled.rules[self.thread]
            stack.pop()
            if not stack:
                del ruled.rules[self.thread]
            if not ruled.rules:
                ruled.restore()
                del _ruled_layers[key]


def _canonical_shape(keras_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch layout of a Keras kernel: ``(*k, in, out)`` → ``(out, in, *k)``, dense ``.T``."""
    if len(keras_shape) >= 3:
        *k, cin, cout = keras_shape
        return (cout, cin, *k)
    return tuple(reversed(keras_shape))


def _keras_layout(a: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_canonical_shape` for values."""
    if a.ndim >= 3:
        return np.moveaxis(a, (0, 1), (-1, -2)).copy()  # (out, in, *k) -> (*k, in, out)
    return a.T.copy() if a.ndim == 2 else a


class KerasAdapter(ModelAdapter):
    """Adapter for Keras 3 models on the TensorFlow backend (channels-last inputs).

    Layers are addressed by name; layers inside nested sub-models by their own name when it
    is unique, or by the path ``"outer/inner"``.
    """

    framework = "tf"
    display_name = "TensorFlow/Keras"

    def __init__(self, model: Any) -> None:
        super().__init__(model, channel_axis=-1)
        self._default_layers: dict[tuple[int, ...], str] = {}
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
        _check_one_input(self.model)
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
        key = (*((tuple(sp.shape[1:]), sp.dtype.name) for sp in specs), self._output_key(), path)
        fn = self._compiled.get(key)
        if fn is not None:
            return fn(*args)
        fn = tf.function(make(self._shared), input_signature=list(specs), autograph=autograph)
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
        targets = _relu_targets(self.model)
        if not targets:
            raise UnsupportedModelError(
                f"{rule!r} ReLU rules found no ReLU to apply to in this Keras model: no "
                "keras.layers.ReLU() layer and no layer with activation='relu' (tf.nn.relu called "
                "inside a custom call(), ReLU6, leaky ReLUs and other activations are not "
                "overridden), so Guided Backprop and DeconvNet would only give its plain gradient; "
                "use saliency instead"
            )
        ordinary = self._compiled
        with _ReluRules(targets, rule):
            self._compiled = _rule_compiled.setdefault(self._shared, {}).setdefault(rule, {})
            try:
                yield
            finally:
                self._compiled = ordinary

    def _named_layers(self) -> list[tuple[str, Any]]:
        return list(_walk(self.model))

    def _layer(self, layer: str) -> Any:
        return dict(self._all_layers())[self.resolve_layer(layer)]

    def _all_layers(self) -> list[tuple[str, Any]]:
        """Every capturable layer: nested models' layers and custom layers' sublayers."""
        return list(_walk_all(self.model))

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

    def layer_names(self) -> list[str]:
        return [name for name, _ in self._all_layers()]

    # -- weights -------------------------------------------------------------------------
    def weight_layers(self) -> list[str]:
        """Leaf layers with trainable weights (nested models walked: ``"outer/inner"``)."""
        return [
            name
            for name, layer in self._named_layers()
            if not getattr(layer, "layers", None) and layer.trainable_weights
        ]

    def reinitialize(self, layers: list[str], draw: Draw) -> None:
        named = dict(self._named_layers())
        for name in layers:
            variables = list(named[name].trainable_weights)
            shapes = [_canonical_shape(tuple(int(d) for d in w.shape)) for w in variables]
            for w, a in zip(variables, draw(shapes), strict=True):
                w.assign(_keras_layout(np.asarray(a)))

    def clone(self) -> KerasAdapter:
        """A copy by ``keras.models.clone_model`` (weights copied), or a deep copy for
        subclassed models without a config."""
        try:
            clone = keras.models.clone_model(self.model)
            clone.set_weights(self.model.get_weights())
        except Exception as clone_error:
            try:
                clone = copy.deepcopy(self.model)
            except Exception:
                raise UnsupportedModelError(
                    f"cannot copy this Keras model ({type(self.model).__name__}): clone_model "
                    f"failed ({clone_error}); give the model a get_config() or use a "
                    "functional/Sequential model"
                ) from clone_error
        adapter = KerasAdapter(clone)
        adapter.output = self.output
        return adapter

    def _display_name(self, qualified: str) -> str:
        short = qualified.rsplit("/", 1)[-1]
        same = [n for n in self.layer_names() if n.rsplit("/", 1)[-1] == short]
        return short if len(same) == 1 else qualified

    def default_layer(self, x: ep.Tensor) -> str:
        key = tuple(x.shape[1:])
        if key not in self._default_layers:
            records: list[tuple[str, tuple[int, ...]]] = []
            leaves = [(n, obj) for n, obj in self._all_layers() if not getattr(obj, "layers", None)]
            patches = []
            owner = threading.get_ident()
            for name, obj in leaves:

                def record(out: Any, name: str = name) -> Any:
                    if tf.is_tensor(out) and threading.get_ident() == owner:
                        records.append((name, tuple(out.shape)))
                    return out

                patches.append(_CallPatch(obj, record))
            with _patch_lock:
                entered = []
                try:
                    for p in patches:
                        p.__enter__()
                        entered.append(p)
                    with self.calling_model(x[:1]):
                        self.model(x.raw[:1], training=False)
                finally:
                    for p in reversed(entered):
                        p.__exit__(None, None, None)
            norms = {n for n, obj in leaves if "normalization" in type(obj).__name__.lower()}
            tokens = token_layers(records, (int(x.shape[1]), int(x.shape[2])), norms) if x.ndim == 4 else []
            chosen = self._informative(x, tokens) if tokens else pick_default_layer(records, self.channel_axis)
            if chosen is None:
                raise LayerError(
                    "the model has no layer with a spatial (N, H, W, C) output; a CAM method "
                    "needs one — pass layer= explicitly or use a gradient/black-box method"
                )
            self._default_layers[key] = self._display_name(chosen)
        return self._default_layers[key]

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


    def model_state(self) -> Any:
        """The weights (Keras models have no training flag or stored gradients)."""
        return tuple(np.asarray(w).tobytes() for w in self.model.get_weights())

    def output_width(self) -> int | None:
        if self.output is not None:  # a selected output: its width is known by running the model
            return None
        try:
            shape = self.model.output_shape
        except (AttributeError, ValueError, RuntimeError):
            return None
        if isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[-1], int):
            return shape[-1]
        return None

    def expected_image_size(self) -> tuple[int, int] | None:
        try:
            shape = self.model.input_shape
        except (AttributeError, ValueError, RuntimeError):
            return None
        if not isinstance(shape, tuple) or len(shape) != 4:
            return None
        _, h, w, _ = shape
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def expected_input(self) -> tuple[int | None, int | None]:
        try:
            shape = self.model.input_shape
        except (AttributeError, ValueError, RuntimeError):
            return None, None
        if not isinstance(shape, tuple) or not shape or not all(
            d is None or isinstance(d, int) for d in shape
        ):
            return None, None
        channels = shape[-1] if len(shape) >= 3 else None
        return len(shape), channels
