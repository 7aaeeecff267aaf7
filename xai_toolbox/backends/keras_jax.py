"""Keras 3 on the JAX backend: the JAX adapter's compiled passes on ``model.stateless_call``.

A Keras model on JAX is a JAX program: its variables' values are the parameters (given to
every ``jax.jit`` pass as arguments, so re-initialised weights need no new trace), and
``stateless_call`` runs it. Layers, names, weights and copies are Keras's (see
:mod:`.keras_common`); inner layers are reached by wrapping their ``call`` while a pass is
traced; gradients are ``jax.value_and_grad``; Guided Backprop and DeconvNet rewrite the traced
program's ReLUs as the JAX adapter does.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import eagerpy as ep

from .jax import JaxAdapter, Program, Record, Tap, is_array
from .keras_common import CallPatch, KerasLayers, check_one_input, patch_lock, walk_all


class KerasProgram(Program):
    """``model.stateless_call(trainable, non_trainable, x, training=False)``; the parameters
    are read from the model's variables on each access (so re-initialised weights are seen)."""

    has_layers = True

    def __init__(self, model: Any) -> None:
        self.model_ref: Any = None
        super().__init__(None, -1)
        self.model_ref = weakref.ref(model)

    @property  # type: ignore[override]
    def params(self) -> Any:
        if self.model_ref is None:  # a structure (see Program.structure): no parameters
            return None
        model = self.model_ref()
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )

    @params.setter
    def params(self, value: Any) -> None:  # the base class's initial None
        del value

    def structure(self) -> Program:
        return self  # holds the model weakly, its parameters not at all

    def run(self, params: Any, x: Any, taps: Mapping[str, Tap] | None = None, record: Record | None = None) -> Any:
        model = self.model_ref()
        trainable, non_trainable = params
        if not taps and record is None:
            return model.stateless_call(trainable, non_trainable, x, **_inference(model))[0]
        owner = threading.get_ident()
        wanted = None if record is not None else set(taps or ())
        layers = [(n, layer) for n, layer in walk_all(model) if wanted is None or n in wanted]

        def after_for(name: str) -> Any:
            def after(out: Any) -> Any:
                if threading.get_ident() != owner:  # another thread's eager call
                    return out
                if record is not None and is_array(out):
                    record(name, out)
                tap = taps.get(name) if taps else None
                return out if tap is None else tap(out)

            return after

        with patch_lock, contextlib.ExitStack() as stack:
            for name, layer in layers:
                stack.enter_context(CallPatch(layer, after_for(name)))
            return model.stateless_call(trainable, non_trainable, x, **_inference(model))[0]


def _inference(model: Any) -> dict[str, Any]:
    """``training=False`` where the model's ``call`` takes it (``stateless_call`` passes its
    keyword arguments to ``call`` as they are; ``model(x)`` would drop it silently)."""
    parameters = inspect.signature(model.call).parameters
    takes = "training" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return {"training": False} if takes else {}


class KerasJaxAdapter(KerasLayers, JaxAdapter):
    """Adapter for Keras 3 models on the JAX backend (channels-last inputs, JAX arrays)."""

    framework = "keras-jax"
    display_name = "Keras (JAX backend)"

    def __init__(self, model: Any) -> None:
        JaxAdapter.__init__(self, model, KerasProgram(model))
        self._default_layers = {}

    def to_model(self, x: Any) -> ep.Tensor:
        check_one_input(self.model)
        return JaxAdapter.to_model(self, x)
