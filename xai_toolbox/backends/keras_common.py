"""What every Keras 3 backend shares: layers, names, call patches, weights, ReLU patches.

Keras 3 runs one model on TensorFlow, JAX or PyTorch (``keras.backend.backend()``, chosen
once per process). The adapters of the three backends (:mod:`.tensorflow`, :mod:`.keras_jax`,
:mod:`.keras_torch`) differ only in how they run, compile and differentiate the model; they
share this module's :class:`KerasLayers` base for everything about the model's structure:

* layer names (``"outer/inner"`` for nested models and custom layers' sublayers) and their
  resolution, the default CAM layer (the last spatial output, or a transformer's token layer);
* inner layers reached by wrapping ``layer.call`` on the instance (:class:`CallPatch`), which
  works for Sequential, functional, subclassed and nested models alike;
* weights in the canonical (PyTorch) layout for model randomisation, copies, model state;
* ReLU layers whose backward pass follows a rule (:class:`ReluRules`), given the backend's
  own rule function.

Only Keras is imported here (never a backend).
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

import eagerpy as ep
import keras
import numpy as np

from ..errors import LayerError, UnsupportedModelError
from .adapter import Draw, ModelAdapter, last_informative, pick_default_layer, token_layers
from .test_models import canonical_shape, keras_layout

# Inner layers are reached by temporarily wrapping ``layer.call`` on the instance. The
# wrapping is per layer object, so captures are serialised.
patch_lock = threading.RLock()

#: The backends whose Keras models this toolbox explains, and their framework names.
KERAS_FRAMEWORKS = {"tensorflow": "tf", "jax": "keras-jax", "torch": "keras-torch"}


def keras_backend() -> str:
    """The backend of the imported Keras (``"tensorflow"``, ``"jax"``, ``"torch"``, ...)."""
    return keras.backend.backend()


def check_one_input(model: Any) -> None:
    """Models are explained with respect to one input tensor: a model that declares several
    is refused before any call (instead of a trace error from deep inside Keras)."""
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


def walk_all(layer: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """:func:`walk`, also into the sublayers of custom layers (a keras_hub encoder's blocks and
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
        yield from walk_all(child, qualified + "/")


def walk(layer: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(qualified name, layer)`` for every layer below ``layer``, depth first, model order."""
    for child in getattr(layer, "layers", []) or []:
        qualified = f"{prefix}{child.name}"
        if isinstance(child, keras.layers.InputLayer):
            continue
        yield qualified, child
        yield from walk(child, qualified + "/")


class CallPatch:
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


def owned_by_this_thread(fn: Callable[[Any], Any], is_tensor: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """``fn`` applied to a layer's tensor outputs in the calling thread only (another thread's
    eager call through a patched layer passes through untouched)."""
    owner = threading.get_ident()

    def after(out: Any) -> Any:
        if threading.get_ident() != owner or not is_tensor(out):
            return out
        return fn(out)

    return after


def capture_into(captured: list[Any], name: str, is_tensor: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """A :class:`CallPatch` function keeping layer ``name``'s output in ``captured`` (calling
    thread only); an output that is not one tensor raises :class:`LayerError`."""
    owner = threading.get_ident()

    def capture(out: Any) -> Any:
        if threading.get_ident() != owner:  # another thread's eager call through this layer
            return out
        if not is_tensor(out):
            raise LayerError(
                f"layer {name!r} returns {type(out).__name__}, not a tensor; pick a layer with a "
                "single tensor output"
            )
        captured[:] = [out]
        return out

    return capture


# -- ReLU backward rules (Guided Backprop, DeconvNet) ------------------------------------------
def relu_targets(model: Any, relu_functions: tuple[Any, ...]) -> list[tuple[Any, str]]:
    """``(layer, attribute)`` for every plain ReLU of the model, nested models included: the
    ``call`` of ``keras.layers.ReLU()`` layers (no ``max_value``, slope or threshold) and the
    ``activation`` of layers built with ``activation="relu"`` (``Dense``, ``Conv2D``,
    ``Activation``, ...): an activation that is one of ``relu_functions``."""
    functions = (keras.activations.relu, keras.ops.relu, *relu_functions)
    found: dict[int, tuple[Any, str]] = {}
    for _, layer in walk(model):
        if isinstance(layer, keras.layers.ReLU):
            plain = layer.max_value is None and not layer.negative_slope and not layer.threshold
            if plain:
                found[id(layer)] = (layer, "call")
        elif any(getattr(layer, "activation", None) is f for f in functions):
            found[id(layer)] = (layer, "activation")
    return list(found.values())


def no_relu_error(rule: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{rule!r} ReLU rules found no ReLU to apply to in this Keras model: no "
        "keras.layers.ReLU() layer and no layer with activation='relu' (a backend's relu called "
        "inside a custom call(), ReLU6, leaky ReLUs and other activations are not "
        "overridden), so Guided Backprop and DeconvNet would only give its plain gradient; "
        "use saliency instead"
    )


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


# Patched layers by (id, attribute); only touched under ``patch_lock``, so a rule's patches
# never interleave with another thread's ``CallPatch`` (which holds it throughout).
_ruled_layers: dict[tuple[int, str], _RuledLayer] = {}


class ReluRules:
    """The model's ReLUs computed by ``rule_fn`` (the backend's ReLU with the rule's backward
    pass) for a ``with`` block, in the calling thread only, and put back exactly as they were
    by the last block that ends."""

    def __init__(self, targets: list[tuple[Any, str]], rule_fn: Callable[[Any], Any]) -> None:
        self.targets, self.rule_fn = targets, rule_fn
        self.thread = threading.get_ident()
        self.keys: list[tuple[int, str]] = []

    def __enter__(self) -> None:
        with patch_lock:
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
        with patch_lock:
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


class KerasLayers(ModelAdapter):
    """The backend-neutral part of the Keras adapters (channels-last inputs): layer names and
    lookup, the default CAM layer, weights, copies and model facts.

    Layers are addressed by name; layers inside nested sub-models by their own name when it
    is unique, or by the path ``"outer/inner"``. Subclasses run the model on their backend
    and say what its tensors are (:meth:`is_native`).
    """

    def __init__(self, model: Any) -> None:
        super().__init__(model, channel_axis=-1)
        self._default_layers: dict[tuple[int, ...], str] = {}

    # -- layers --------------------------------------------------------------------------
    def _named_layers(self) -> list[tuple[str, Any]]:
        return list(walk(self.model))

    def _all_layers(self) -> list[tuple[str, Any]]:
        """Every capturable layer: nested models' layers and custom layers' sublayers."""
        return list(walk_all(self.model))

    def _layer(self, layer: str) -> Any:
        return dict(self._all_layers())[self.resolve_layer(layer)]

    def layer_names(self) -> list[str]:
        return [name for name, _ in self._all_layers()]

    def _display_name(self, qualified: str) -> str:
        short = qualified.rsplit("/", 1)[-1]
        same = [n for n in self.layer_names() if n.rsplit("/", 1)[-1] == short]
        return short if len(same) == 1 else qualified

    def _eager_call(self, raw: Any) -> Any:
        """One eager call of the model on a native tensor (the default layer's probe)."""
        return self.model(raw, training=False)

    def default_layer(self, x: ep.Tensor) -> str:
        key = tuple(x.shape[1:])
        if key not in self._default_layers:
            records: list[tuple[str, tuple[int, ...]]] = []
            leaves = [(n, obj) for n, obj in self._all_layers() if not getattr(obj, "layers", None)]
            patches = []
            for name, obj in leaves:

                def record(out: Any, name: str = name) -> Any:
                    records.append((name, tuple(out.shape)))
                    return out

                patches.append(CallPatch(obj, owned_by_this_thread(record, self.is_native)))
            with patch_lock, contextlib.ExitStack() as stack:
                for p in patches:
                    stack.enter_context(p)
                with self.calling_model(x[:1]):
                    self._eager_call(x.raw[:1])
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
        """The last token layer whose patch tokens the outputs depend on: the gradient of the
        outputs' sum at each candidate, on one input (backends may do it in one pass)."""
        prefix = dict(candidates)
        largest: dict[str, float] = {}
        for name, _ in candidates:
            try:
                _, grad, _ = self.layer_activations_pass(x[:1], name, lambda outputs: outputs.sum(axis=1))
            except LayerError:  # not called, or the outputs do not depend on it
                continue
            largest[name] = float(grad[:, prefix[name] :].abs().max().item())
        return last_informative(candidates, largest)

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
            shapes = [canonical_shape(tuple(int(d) for d in w.shape)) for w in variables]
            for w, a in zip(variables, draw(shapes), strict=True):
                w.assign(keras_layout(np.asarray(a)))

    def clone(self) -> KerasLayers:
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
        adapter = type(self)(clone)
        adapter.output = self.output
        return adapter

    def model_state(self) -> Any:
        """The weights (Keras models have no training flag or stored gradients)."""
        return tuple(np.asarray(w).tobytes() for w in self.model.get_weights())

    # -- model facts ---------------------------------------------------------------------
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
