"""PyTorch adapter: ``nn.Module`` (and TorchScript) models, NCHW inputs."""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import eagerpy as ep
import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from .._precision import requested
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
    token_layers,
)

# Models shared by several adapters or threads: eval mode is entered once and the original
# training flag restored when the last user leaves.
_AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_mode_lock = threading.Lock()
_mode_users: weakref.WeakKeyDictionary[torch.nn.Module, list[Any]] = weakref.WeakKeyDictionary()
# Forward hooks are per module, not per thread: captures of one layer are serialised.
_hook_lock = threading.RLock()

#: ``memory_format`` values of :meth:`TorchAdapter.configure`.
MEMORY_FORMATS = ("auto", "measure", "channels_last", "contiguous")
#: Timed passes per layout in a ``"measure"`` trial; the first of each warms its kernels up and
#: is not counted.
TRIAL_PASSES = 3
#: Inputs of the trial's passes (the first ones of the pass that starts it).
TRIAL_INPUTS = 32
#: Channels-last is chosen unless its best pass takes more than this share of the contiguous
#: one's time: oneDNN (CPU) and cuDNN's tensor cores are built around channels-last, and the
#: gain grows with the batch (here 11 % at 32 inputs of 64×64, 15 % at 128, 23 % at 64 of
#: 112×112 on the benchmark ResNet), so a tie on the trial's 32 inputs goes to channels-last;
#: the trial is there to catch the models it slows down.
CHANNELS_LAST_SHARE = 1.0


def prefers_channels_last(times: dict[bool, list[float]]) -> bool:
    """The ``"measure"`` rule on trial timings ``{channels_last: [seconds, ...]}``: drop each
    layout's first pass (kernel warm-up), keep channels-last if its best remaining pass takes
    at most :data:`CHANNELS_LAST_SHARE` of the contiguous one's (is not slower).

    Example:
        >>> prefers_channels_last({False: [9.0, 1.0, 1.1], True: [9.0, 0.5, 0.6]})
        True
    """
    best = {layout: min(t[1:]) if len(t) > 1 else float("inf") for layout, t in times.items()}
    return best[True] <= CHANNELS_LAST_SHARE * best[False]


class _LayoutTrial:
    """The layout chosen for one model, device, input shape and kind of pass (forward, or
    forward and backward): measured once, before the first pass of that kind runs, on its
    first :data:`TRIAL_INPUTS` inputs (so every result of a call comes from one layout). A
    model that fails on channels-last inputs (``view`` of a strided tensor) stays contiguous.
    """

    def __init__(self) -> None:
        self.times: dict[bool, list[float]] = {False: [], True: []}
        self.decided: bool | None = None
        self.lock = threading.Lock()

    def refuse(self) -> None:
        self.decided = False


# Per model (weakly): the trials by (device, input shape, kind of pass, precision), and the
# compiled module, shared by every adapter of the model (a method builds its own adapter).
_layout_lock = threading.Lock()
_trials: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[Any, ...], _LayoutTrial]] = (
    weakref.WeakKeyDictionary()
)
_compiled_modules: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


@dataclass
class _Layout:
    """How the model runs in the current pass (set by :meth:`TorchAdapter._pass_layout`)."""

    channels_last: bool = False
    contiguous: bool = False
    compiled: bool = False
    trial: _LayoutTrial | None = None
    #: channels-last was the adapter's choice, not the user's: a model that cannot run it
    #: runs as given instead
    may_fall_back: bool = False


_layout: ContextVar[_Layout | None] = ContextVar("xai_toolbox_torch_layout", default=None)


class TorchAdapter(ModelAdapter):
    """Adapter for ``torch.nn.Module`` models.

    Inputs go to the device of the model's first parameter (or buffer). Gradients use
    :func:`torch.autograd.grad` on the inputs only, so parameters' ``.grad`` stay untouched.
    """

    framework = "torch"
    display_name = "PyTorch"
    supports_autocast = True
    mutable_tensors = True
    supports_compile = True
    memory_formats = MEMORY_FORMATS

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model, channel_axis=1)
        # TorchScript modules take no forward hooks, so their inner layers cannot be captured.
        self.supports_layers = not isinstance(model, torch.jit.ScriptModule)
        self._default_layers: dict[tuple[int, ...], str] = {}
        self._call_parameters: list[torch.nn.Parameter] | None = None

    # -- data --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            return tensor.device  # the first one: no need to walk every parameter
        return torch.device("cpu")

    def is_native(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def to_model(self, x: Any) -> ep.Tensor:
        device = self.device
        if device.type == "meta":
            raise UnsupportedModelError(
                "the PyTorch model is on the meta device: its parameters have shapes but no values; "
                "materialise it first (model.to_empty(device='cpu'), then load_state_dict(...))"
            )
        if isinstance(x, torch.Tensor):
            if x.is_complex():
                raise InputError(f"expected real numbers, got a tensor of dtype {x.dtype}")
            if x.device.type == "meta":
                raise InputError("the inputs are on the meta device: they have a shape but no values")
            with torch.inference_mode(False):  # an inference tensor cannot take part in autograd
                t = x.detach().to(device=device, dtype=torch.float32)
                if t.is_inference():
                    t = t.clone()
        else:
            t = torch.from_numpy(float32_array(x)).to(device)
        return ep.astensor(t)

    def restore(self, t: ep.Tensor, like: Any) -> Any:
        raw = t.raw.detach()
        if isinstance(like, torch.Tensor):
            return raw.to(like.device)
        return as_type_of(raw.cpu().numpy(), like)  # NumPy, or another framework's tensor

    def from_numpy(self, like: ep.Tensor, a: np.ndarray) -> ep.Tensor:
        """A host array beside ``like``; on CUDA staged in pinned memory and copied
        asynchronously, so chunk loops never wait for the work queued before the copy.

        (A blocking host-to-device copy synchronises the stream: the host would wait for the
        previous chunk's forward pass before queueing the next one. PyTorch's caching host
        allocator keeps the staging buffer until the copy has run.)
        """
        array = np.ascontiguousarray(a)
        device = like.raw.device
        if device.type != "cuda":
            return ep.from_numpy(like, array)
        if not array.flags.writeable:  # torch.from_numpy warns on read-only arrays
            array = array.copy()
        staged = torch.from_numpy(array).pin_memory()
        return ep.astensor(staged.to(device, non_blocking=True))

    def repeated_row(self, x: ep.Tensor, item: int, count: int) -> ep.Tensor:
        row = x.raw[item : item + 1]
        return ep.astensor(row.expand(count, *row.shape[1:]))

    def write_rows(self, buffer: Any, index: Any, values: Any, *, add: bool = False) -> None:
        values = values.detach()
        if add:
            buffer[index] += values
        else:
            buffer[index] = values

    def random_normal(self, like: ep.Tensor, shape: tuple[int, ...], seed: int | None) -> ep.Tensor:
        device = like.raw.device
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return ep.astensor(torch.randn(shape, generator=generator, device=device, dtype=torch.float32))

    # -- model -------------------------------------------------------------------------
    def is_out_of_memory(self, exc: BaseException) -> bool:
        # torch.cuda.OutOfMemoryError is torch.OutOfMemoryError; other backends (MPS, older
        # allocators) raise a plain RuntimeError that says so, the CPU allocator "can't allocate".
        if isinstance(exc, torch.OutOfMemoryError | MemoryError):
            return True
        text = str(exc).lower()
        return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)

    def release_memory(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def _run(self, raw: torch.Tensor, *, hooked: bool = False) -> Any:
        """The model on ``raw`` (float32), cast to the model's own floating dtype: float64,
        float16 and bfloat16 models run as they are (outputs come back as float32, see
        :meth:`select_output`; gradients flow back through the cast as float32)."""
        dtype = _floating_dtype(self.model)
        return self._call(raw if dtype is None or raw.dtype == dtype else raw.to(dtype), hooked=hooked)

    # -- memory format and compilation ---------------------------------------------------
    def _call(self, raw: torch.Tensor, *, hooked: bool = False) -> Any:
        """The model (or its compiled module) on ``raw``, in the current pass's layout;
        ``hooked``: the pass has forward hooks on inner modules (never compiled)."""
        layout = _layout.get()
        if layout is None:
            return self.model(raw)
        model = self.model
        if layout.compiled and not hooked:
            model = _compiled_module(self.model)
            # One compilation for every batch size (the last chunk is smaller), not one each.
            torch._dynamo.maybe_mark_dynamic(raw, 0)
        if layout.channels_last and raw.ndim == 4:
            try:
                return model(raw.contiguous(memory_format=torch.channels_last))
            except RuntimeError as exc:
                if not layout.may_fall_back or self.is_out_of_memory(exc):
                    raise
                # e.g. ``x.view(n, -1)`` on strided activations (in a branch the trial did not
                # take): this pass goes on as given (a genuine error is raised again there).
                if layout.trial is not None:
                    layout.trial.refuse()  # and the model stays contiguous
                layout.channels_last = False
        elif layout.contiguous and raw.ndim == 4:
            raw = raw.contiguous()
        return model(raw)

    def _convolutional(self) -> bool:
        """Whether the model has 2-d convolutions (whose speed depends on the layout)."""
        found = self.__dict__.get("_has_convolutions")
        if found is None:
            kinds = ("Conv2d", "ConvTranspose2d")
            found = any(
                isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
                or getattr(m, "original_name", None) in kinds  # TorchScript modules
                for m in self.model.modules()
            )
            self.__dict__["_has_convolutions"] = found
        return found

    def _choose_layout(self, raw: torch.Tensor, kind: str) -> _Layout:
        compiled = self.compile and kind in ("forward", "gradient")
        if raw.ndim != 4 or self.memory_format == "contiguous":
            return _Layout(contiguous=raw.ndim == 4, compiled=compiled)
        if self.memory_format == "channels_last":
            return _Layout(channels_last=True, compiled=compiled)
        # Compiled passes choose their own layouts (inductor); models without 2-d convolutions
        # run as given.
        if compiled or not self._convolutional():
            return _Layout(compiled=compiled)
        if self.memory_format == "auto":
            # The rule: channels-last on CUDA (cuDNN's tensor-core kernels are NHWC), as given
            # elsewhere. On CPUs the gain depends on the chip (0-20 % on this project's,
            # 1.6-1.75x reported on others) and only a measurement can tell: "measure".
            if raw.device.type == "cuda":
                return _Layout(channels_last=True, may_fall_back=True)
            return _Layout()
        # "measure": convolutional models on the layout their trial found faster.
        backward = kind in ("gradient", "layer gradient")
        key = (str(raw.device), tuple(raw.shape[1:]), "gradient" if backward else "forward", requested())
        with _layout_lock:
            try:
                trials = _trials.setdefault(self.model, {})
            except TypeError:  # not weakly referenceable: a trial for this adapter only
                trials = self.__dict__.setdefault("_own_trials", {})
            trial = trials.get(key)
            if trial is None:
                trial = trials[key] = _LayoutTrial()
        with trial.lock:  # concurrent first passes wait for the one trial
            if trial.decided is None:
                self._measure_layouts(trial, raw, backward)
        return _Layout(channels_last=bool(trial.decided), trial=trial, may_fall_back=True)

    def _measure_layouts(self, trial: _LayoutTrial, raw: torch.Tensor, backward: bool) -> None:
        """Time :data:`TRIAL_PASSES` passes per layout on the first inputs, interleaved, and
        decide by :func:`prefers_channels_last`. A layout that fails loses; nothing the
        trial computes is returned."""
        sample = raw[:TRIAL_INPUTS].detach()
        dtype = _floating_dtype(self.model)
        if dtype is not None:
            sample = sample.to(dtype)
        for _ in range(TRIAL_PASSES):
            for channels_last in (False, True):
                batch = sample.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                try:
                    _synchronize(raw.device)
                    start = time.perf_counter()
                    if backward:
                        with torch.enable_grad():
                            leaf = batch.detach().requires_grad_(True)
                            outputs = self.select_output(self.model(leaf))
                            torch.autograd.grad(outputs.float().sum(), leaf, allow_unused=True)
                    else:
                        with torch.no_grad():
                            self.select_output(self.model(batch))
                    _synchronize(raw.device)
                except Exception:  # the pass itself will say what is wrong, in its own layout
                    trial.decided = False
                    return
                trial.times[channels_last].append(time.perf_counter() - start)
        trial.decided = prefers_channels_last(trial.times)

    @contextlib.contextmanager
    def _pass_layout(self, x: ep.Tensor, kind: str) -> Iterator[None]:
        """The layout (and compiled module) of one pass of ``kind`` (``"forward"``,
        ``"gradient"``: compiled with ``compile=True``; ``"layer"``, ``"layer gradient"``: with
        hooks, never compiled). With ``"measure"``, the first pass of a kind on a new input
        shape runs the trial first."""
        token = _layout.set(self._choose_layout(x.raw, kind))
        try:
            yield
        finally:
            _layout.reset(token)

    def layout_choice(self, x: Any, kind: str = "forward") -> str | None:
        """The layout ``"measure"`` settled on for inputs like ``x`` (``"channels_last"`` or
        ``"contiguous"``), ``None`` while the trial runs or where no trial applies.

        Example:
            >>> adapter.layout_choice(x)           # after a few passes
            'channels_last'
        """
        raw = x.raw if isinstance(x, ep.Tensor) else x
        key = (str(raw.device), tuple(raw.shape[1:]), "gradient" if "gradient" in kind else "forward", requested())
        trials = _trials.get(self.model) or self.__dict__.get("_own_trials") or {}
        trial = trials.get(key)
        if trial is None or trial.decided is None:
            return None
        return "channels_last" if trial.decided else "contiguous"

    def select_output(self, outputs: Any) -> Any:
        # Scores, curves and maps are computed in float32 whatever the model computes in.
        selected = super().select_output(outputs)
        if isinstance(selected, torch.Tensor) and selected.is_floating_point() and selected.dtype != torch.float32:
            return selected.float()
        return selected

    def no_layers_message(self) -> str:
        if self.supports_layers:
            return super().no_layers_message()
        return (
            "TorchScript models have no module hooks, so layer-based methods such as CAMs cannot "
            "run on them; load the model with --model package.module:factory [--weights FILE] "
            "(in Python: pass the nn.Module) instead"
        )

    def forward_pass(self, x: ep.Tensor) -> ep.Tensor:
        precision = requested()
        if precision is None:
            with torch.no_grad(), self.calling_model(x), self._pass_layout(x, "forward"):
                return ep.astensor(self.select_output(self._run(x.raw)))
        device = x.raw.device.type
        dtype = _AUTOCAST_DTYPES.get(precision) or (torch.float16 if device == "cuda" else torch.bfloat16)
        with torch.no_grad(), self.calling_model(x), torch.autocast(device, dtype=dtype), self._pass_layout(x, "forward"):
            outputs = self.select_output(self._call(x.raw))
        # Scores, softmax and curves are computed in float32 whatever the model ran in.
        return ep.astensor(outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs)

    def differentiable_forward(self, x: ep.Tensor) -> ep.Tensor:
        with self.calling_model(x):
            return ep.astensor(self.select_output(self._run(x.raw)))

    def differentiable_activations(self, x: ep.Tensor, layer: str) -> tuple[ep.Tensor, ep.Tensor]:
        module = self._module(layer)
        captured: list[torch.Tensor] = []
        owner = threading.get_ident()

        def hook(_m: torch.nn.Module, _inp: Any, out: Any) -> None:
            if threading.get_ident() != owner:  # another thread's forward through this module
                return
            if not isinstance(out, torch.Tensor):
                raise LayerError(
                    f"layer {layer!r} returns {type(out).__name__}, not a tensor; "
                    "pick a layer with a single tensor output"
                )
            captured[:] = [out]

        with _hook_lock:
            handle = module.register_forward_hook(hook)
            try:
                with self.calling_model(x):
                    outputs = self.select_output(self._run(x.raw, hooked=True))
            finally:
                handle.remove()
        if not captured:
            raise LayerError(f"layer {layer!r} was not called by the model's forward")
        return ep.astensor(_float32(captured[0])), ep.astensor(outputs)

    def value_and_grad_pass(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        leaf = x.raw.detach().requires_grad_(True)
        with torch.enable_grad(), self._pass_layout(x, "gradient"):
            value = fn(ep.astensor(leaf)).raw
            grad = None
            if value.requires_grad:  # else the score does not depend on the input at all
                with self.calling_model(x, "differentiated"):
                    (grad,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(leaf)
        return ep.astensor(value.detach()), ep.astensor(grad)

    @contextlib.contextmanager
    def relu_backward(self, rule: str) -> Iterator[None]:
        """ReLU backward rules for the block (see :meth:`ModelAdapter.relu_backward`).

        A :class:`~torch.overrides.TorchFunctionMode`, active in the calling thread only,
        replaces every ReLU the forward pass applies — ``nn.ReLU`` modules and functional
        ``F.relu``, ``torch.relu``, ``Tensor.relu`` calls in a custom ``forward``, in place or
        not — by one whose backward is the rule. Nothing on the model is modified, so there
        is nothing to restore. TorchScript code and other activations (``ReLU6``,
        ``LeakyReLU``, GELU, SiLU, ...) are not reached; a block whose passes applied no ReLU
        at all raises :class:`~xai_toolbox.errors.UnsupportedModelError` at its end.
        """
        mode = _ReluRuleMode(guided=check_relu_rule(rule) == "guided")
        with mode:
            yield
        if mode.calls and not mode.applied:
            raise UnsupportedModelError(
                f"{rule!r} ReLU rules found no ReLU to apply to in this PyTorch model: it applies no "
                "nn.ReLU / F.relu / torch.relu with gradients (other activations such as GELU, SiLU, "
                "LeakyReLU or ReLU6, or TorchScript code, are not overridden), so Guided Backprop "
                "and DeconvNet would only give its plain gradient; use saliency instead"
            )

    def _module(self, layer: str) -> torch.nn.Module:
        return dict(self.model.named_modules())[self.resolve_layer(layer)]

    def layer_activations_pass(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        module = self._module(layer)
        captured: list[torch.Tensor] = []
        owner = threading.get_ident()

        def hook(_m: torch.nn.Module, _inp: Any, out: Any) -> Any:
            if threading.get_ident() != owner:  # another thread's forward through this module
                return None
            if not isinstance(out, torch.Tensor):
                raise LayerError(
                    f"layer {layer!r} returns {type(out).__name__}, not a tensor; "
                    "pick a layer with a single tensor output"
                )
            if score_of is not None and not out.requires_grad:
                # Frozen weights and inputs without grad: make the activation a leaf.
                out = out.detach().requires_grad_(True)
            captured[:] = [out]
            return out

        with _hook_lock, self._pass_layout(x, "layer" if score_of is None else "layer gradient"):
            handle = module.register_forward_hook(hook)
            try:
                if score_of is None:
                    with torch.no_grad(), self.calling_model(x):
                        outputs = self.select_output(self._run(x.raw, hooked=True))
                    if not captured:
                        raise LayerError(f"layer {layer!r} was not called by the model's forward")
                    return ep.astensor(_float32(captured[0])), None, ep.astensor(outputs)
                with torch.enable_grad():
                    with self.calling_model(x):
                        outputs = self.select_output(self._run(x.raw, hooked=True))
                    if not captured:
                        raise LayerError(f"layer {layer!r} was not called by the model's forward")
                    score = score_of(ep.astensor(outputs)).raw
                    grad = None
                    if score.requires_grad:
                        with self.calling_model(x, "differentiated"):
                            (grad,) = torch.autograd.grad(score.sum(), captured[0], allow_unused=True)
            finally:
                handle.remove()
        if grad is None:
            raise LayerError(f"the score does not depend on layer {layer!r}")
        return ep.astensor(_float32(captured[0].detach())), ep.astensor(_float32(grad)), ep.astensor(outputs.detach())

    def forward_with_activations_pass(self, x: ep.Tensor, layer: str, activations: ep.Tensor) -> ep.Tensor:
        module = self._module(layer)
        replacement = activations.raw
        owner = threading.get_ident()
        replaced: list[bool] = []

        def hook(_m: torch.nn.Module, _inp: Any, out: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            if not isinstance(out, torch.Tensor):
                raise LayerError(f"layer {layer!r} returns {type(out).__name__}, not a tensor")
            check_replacement(layer, tuple(out.shape), tuple(replacement.shape))
            replaced.append(True)
            return replacement.to(dtype=out.dtype)

        with _hook_lock, self._pass_layout(x, "layer"):
            handle = module.register_forward_hook(hook)
            try:
                with torch.no_grad(), self.calling_model(x):
                    outputs = self.select_output(self._run(x.raw, hooked=True))
            finally:
                handle.remove()
        if not replaced:
            raise LayerError(f"layer {layer!r} was not called by the model's forward")
        return ep.astensor(outputs)

    def layer_names(self) -> list[str]:
        return [name for name, _ in self.model.named_modules() if name]

    # -- weights -------------------------------------------------------------------------
    def weight_layers(self) -> list[str]:
        """Modules owning trainable parameters of their own, by dotted name."""
        return [
            name
            for name, module in self.model.named_modules()
            if any(p.requires_grad for p in module.parameters(recurse=False))
        ]

    def reinitialize(self, layers: list[str], draw: Draw) -> None:
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name in layers:
                params = [p for p in modules[name].parameters(recurse=False) if p.requires_grad]
                for p, a in zip(params, draw([tuple(p.shape) for p in params]), strict=True):
                    p.copy_(torch.from_numpy(np.asarray(a)).to(device=p.device, dtype=p.dtype))

    def clone(self) -> TorchAdapter:
        clone = TorchAdapter(copy.deepcopy(self.model))
        clone.output = self.output
        clone.compile, clone.memory_format = self.compile, self.memory_format
        return clone

    def default_layer(self, x: ep.Tensor) -> str:
        key = tuple(x.shape[1:])
        if key not in self._default_layers:
            records: list[tuple[str, tuple[int, ...]]] = []
            handles = []
            owner = threading.get_ident()
            for name, module in self.model.named_modules():
                if not name:
                    continue

                def record(_m: Any, _i: Any, out: Any, name: str = name) -> None:
                    if isinstance(out, torch.Tensor) and threading.get_ident() == owner:
                        records.append((name, tuple(out.shape)))

                handles.append(module.register_forward_hook(record))
            try:
                with _hook_lock, torch.no_grad(), self.calling_model(x[:1]):
                    self._run(x.raw[:1])
            finally:
                for h in handles:
                    h.remove()
            tokens = token_layers(records, _image_size(x), _norm_layers(self.model)) if x.ndim == 4 else []
            chosen = self._informative(x, tokens) if tokens else pick_default_layer(records, self.channel_axis)
            if chosen is None:
                raise LayerError(
                    "the model has no layer with a spatial (N, C, H, W) output; a CAM method "
                    "needs one — pass layer= explicitly or use a gradient/black-box method"
                )
            self._default_layers[key] = chosen
        return self._default_layers[key]

    def _informative(self, x: ep.Tensor, candidates: list[tuple[str, int]]) -> str:
        """The last token layer whose patch tokens the outputs depend on: one forward and
        backward pass on one input, the gradient of the outputs' sum taken at every candidate."""
        modules = dict(self.model.named_modules())
        captured: dict[str, torch.Tensor] = {}
        owner = threading.get_ident()
        handles = []
        for name, _ in candidates:

            def keep(_m: Any, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and threading.get_ident() == owner:
                    captured[name] = out

            handles.append(modules[name].register_forward_hook(keep))
        leaf = x.raw[:1].detach().requires_grad_(True)  # a graph even with frozen weights
        try:
            with _hook_lock, torch.enable_grad(), self.calling_model(x[:1]):
                score = self.select_output(self._run(leaf)).float().sum()
                names = [name for name, _ in candidates if name in captured and captured[name].requires_grad]
                grads = torch.autograd.grad(score, [captured[n] for n in names], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        prefix = dict(candidates)
        largest = {
            n: 0.0 if g is None else float(g[:, prefix[n] :].abs().max()) for n, g in zip(names, grads, strict=True)
        }
        return last_informative(candidates, largest)

    def _first_and_last(self) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
        if not isinstance(self.model, torch.nn.Sequential):
            return None, None
        return _leaf(self.model, 0), _leaf(self.model, -1)

    def output_width(self) -> int | None:
        if self.output is not None:  # a selected output: its width is known by running the model
            return None
        _, last = self._first_and_last()
        return last.out_features if isinstance(last, torch.nn.Linear) else None

    def expected_input(self) -> tuple[int | None, int | None]:
        first, _ = self._first_and_last()
        if first is None:  # custom forward: the first conv in registration order is a good hint
            first = next(
                (m for m in self.model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv1d)),
                None,
            )
            if first is None:
                return None, None
            return (4 if isinstance(first, torch.nn.Conv2d) else 3), first.in_channels
        if isinstance(first, torch.nn.Conv2d):
            return 4, first.in_channels
        if isinstance(first, torch.nn.Conv1d):
            return 3, first.in_channels
        if isinstance(first, torch.nn.Linear):
            return 2, first.in_features
        return None, None

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Eval mode for the call; the training flags (module by module), ``requires_grad``
        flags and existing ``.grad`` tensors (values and identity) are restored afterwards,
        also on errors. A model already in eval mode is left alone (one walk over its modules)."""
        model = self.model
        modules = list(model.modules())  # one walk serves the flags, the parameters and the targets
        parameters = list(dict.fromkeys(p for m in modules for p in m._parameters.values() if p is not None))
        # References, not copies, except for gradients a user is accumulating (rare).
        saved = [(p, p.requires_grad, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in parameters]
        with _mode_lock:  # concurrent calls on one model: the first in switches, the last out restores
            users = _mode_users.get(model)
            if users is None:
                training = [m for m in modules if m.training]
                if training:
                    model.eval()
                users = _mode_users[model] = [0, training]
            users[0] += 1
        outer = self._call_parameters is None
        if outer:
            self._call_parameters = parameters
        try:
            with torch.inference_mode(False):  # a call made under inference_mode still differentiates
                yield
        finally:
            if outer:
                self._call_parameters = None
            with _mode_lock:
                users[0] -= 1
                if users[0] == 0:
                    del _mode_users[model]
                    _restore_training(model, users[1])
            _restore_parameters(saved)

    def model_state(self) -> Any:
        """Training flags, which parameters hold a ``.grad`` (and its values), and the weights."""
        modules = tuple((name, m.training) for name, m in self.model.named_modules())
        grads = tuple(
            (name, None if p.grad is None else p.grad.detach().cpu().numpy().tobytes())
            for name, p in self.model.named_parameters()
        )
        weights = tuple(
            (name, t.detach().cpu().numpy().tobytes()) for name, t in self.model.state_dict().items()
        )
        return modules, grads, weights

    def last_parameter(self) -> torch.nn.Parameter | None:
        """The model's last parameter (what a replaced head changes), or ``None``.

        Inside a call, taken from the list :meth:`preserved` already made: no second walk.
        """
        parameters = self._call_parameters
        if parameters is not None:
            return parameters[-1] if parameters else None
        return super().last_parameter()


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a trial times the pass itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compiled_module(model: torch.nn.Module) -> Any:
    """``torch.compile(model)``, once per model (every adapter of the model shares it)."""
    with _layout_lock:
        try:
            compiled = _compiled_modules.get(model)
            if compiled is None:
                compiled = _compiled_modules[model] = torch.compile(model)
        except TypeError:  # not weakly referenceable
            compiled = torch.compile(model)
    return compiled


def _float32(t: torch.Tensor) -> torch.Tensor:
    """Activations and gradients of a float16/bfloat16/float64 model, as float32."""
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def _floating_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (or buffer), if it is not float32."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return None if tensor.dtype == torch.float32 else tensor.dtype
    return None


def _image_size(x: ep.Tensor) -> tuple[int, int]:
    return int(x.shape[2]), int(x.shape[3])


def _norm_layers(model: torch.nn.Module) -> set[str]:
    """Names of the normalisation modules (LayerNorm, RMSNorm, ... by class name)."""
    return {name for name, m in model.named_modules() if name and "norm" in type(m).__name__.lower()}


def _leaf(module: torch.nn.Module, end: int) -> torch.nn.Module:
    """The first (``end=0``) or last (``end=-1``) module without children under ``module``:
    a walk down one branch, not over the whole model (this runs on every call)."""
    while True:
        children = list(module.children())
        if not children:
            return module
        module = children[end]


def _restore_training(model: torch.nn.Module, training: list[torch.nn.Module]) -> None:
    if not training:
        return
    if len(training) == sum(1 for _ in model.modules()):
        model.train(True)  # through train(), for modules that override it
        return
    for module in training:  # a mix of modes: put back exactly the modules that were training
        module.training = True


def _restore_parameters(saved: list[tuple[Any, bool, Any, Any]]) -> None:
    with torch.no_grad():
        for p, requires_grad, grad, values in saved:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
            if values is not None and not torch.equal(grad, values):
                grad.copy_(values)


# -- ReLU backward rules (Guided Backprop, DeconvNet) ------------------------------------------
class _ReluWithRule(torch.autograd.Function):
    """``relu(z)`` forwards (in place when the caller asked for it); backwards ``relu(R)``,
    gated by ``1[z > 0]`` for the guided rule (``z > 0`` exactly where ``relu(z) > 0``)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, guided: bool, inplace: bool) -> torch.Tensor:
        if inplace:
            out = torch.relu_(z)
            ctx.mark_dirty(z)
        else:
            out = torch.relu(z)
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if not ctx.guided:
            return torch.relu(grad), None, None
        (out,) = ctx.saved_tensors
        # ReLU's own backward kernel (R where out > 0, else 0), then its positive part in place.
        return torch.ops.aten.threshold_backward(grad, out, 0).relu_(), None, None


# Every public spelling of a ReLU; ``None``: in place if the call says ``inplace=True``.
_RELU_FUNCTIONS: dict[Any, bool | None] = {
    torch.relu: False,
    torch.relu_: True,
    torch.Tensor.relu: False,
    torch.Tensor.relu_: True,
    torch.nn.functional.relu: None,
}


class _ReluRuleMode(TorchFunctionMode):
    """Routes every ReLU applied to a tensor that needs gradients through :class:`_ReluWithRule`
    (modes are per thread; inside this handler the mode is off, so nothing recurses)."""

    def __init__(self, guided: bool) -> None:
        super().__init__()
        self.guided = guided
        self.calls = 0
        self.applied = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        self.calls += 1
        if func not in _RELU_FUNCTIONS:
            return func(*args, **kwargs)
        z = args[0]
        if not (isinstance(z, torch.Tensor) and z.requires_grad and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        inplace = _RELU_FUNCTIONS[func]
        if inplace is None:
            inplace = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        self.applied += 1
        return _ReluWithRule.apply(z, self.guided, inplace)
