"""The workload and its bare baseline, and the instrumentation that counts a call's passes.

:class:`Workbench` holds the model, inputs and labels for one framework and device;
:class:`BareRunner` replays a recorded sequence of passes with nothing but the model;
:func:`counting` records the passes (kind and batch size) a method or metric makes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .config import Config


class Workbench:
    """Model, inputs and bare baselines for one framework and device."""

    def __init__(self, cfg: Config, n_images: int | None = None) -> None:
        from .models import resnet

        self.cfg = cfg
        self.framework = cfg.framework
        self.device = cfg.device
        n = n_images or cfg.n_images
        rng = np.random.default_rng(cfg.seed)
        self.images = rng.uniform(0.0, 1.0, (n, 3, cfg.size, cfg.size)).astype(np.float32)
        if cfg.model == "cnn":
            from xai_toolbox.testing import cnn

            self.model = cnn(cfg.framework, cfg.seed, size=cfg.size, classes=cfg.classes, width=cfg.width)
        else:
            self.model = resnet(cfg.framework, cfg.seed, size=cfg.size, width=cfg.width, classes=cfg.classes)
        if self.framework == "torch":
            import torch

            self.model = self.model.to(self.device)
            self.x = torch.from_numpy(self.images).to(self.device)
        else:
            import tensorflow as tf

            with self.tf_device():
                self.x = tf.constant(self.images.transpose(0, 2, 3, 1))
        self.bare = BareRunner(self)
        self.labels = self.bare.top1()
        # Explanations for the metrics: random maps (a metric's cost does not depend on them).
        self.maps = self.native(rng.uniform(0.0, 1.0, (n, cfg.size, cfg.size)).astype(np.float32))

    def tf_device(self) -> Any:
        import tensorflow as tf

        return tf.device("/GPU:0" if self.device == "cuda" else "/CPU:0")

    def native(self, a: np.ndarray) -> Any:
        if self.framework == "torch":
            import torch

            return torch.from_numpy(a).to(self.device)
        import tensorflow as tf

        with self.tf_device():
            return tf.constant(a)

    def sync(self) -> None:
        """Wait for queued device work, so a timer measures the work and not its launch."""
        if self.framework == "torch" and self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        # TensorFlow eager ops return when done on CPU; on GPU the fetch of the last result syncs.

    def context(self) -> Any:
        return self.tf_device() if self.framework == "tf" else contextlib.nullcontext()


class BareRunner:
    """The baseline: a plain loop of model calls at recorded batch sizes, nothing else."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.framework = bench.framework
        self._x_cache: dict[int, Any] = {}
        if self.framework == "tf":
            import tensorflow as tf

            model = bench.model
            spec = tf.TensorSpec((None, *bench.x.shape[1:]), tf.float32)

            def forward(z: Any) -> Any:
                return model(z, training=False)

            def gradient(z: Any) -> Any:  # forward and backward in one graph, as users write it
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(z)
                    score = tf.reduce_sum(model(z, training=False)[:, 0])
                return tape.gradient(score, z)

            self._forward = tf.function(forward, input_signature=[spec], autograph=False)
            self._gradient = tf.function(gradient, input_signature=[spec], autograph=False)

    def rows(self, b: int) -> Any:
        """``b`` model inputs: the benchmark images repeated (so a chunk is real image data)."""
        if b not in self._x_cache:
            n = self.bench.x.shape[0]
            idx = np.arange(b) % n
            if self.framework == "torch":
                import torch

                self._x_cache[b] = self.bench.x[torch.from_numpy(idx).to(self.bench.x.device)]
            else:
                import tensorflow as tf

                with self.bench.tf_device():
                    self._x_cache[b] = tf.gather(self.bench.x, idx)
        return self._x_cache[b]

    def top1(self) -> np.ndarray:
        if self.framework == "torch":
            import torch

            with torch.no_grad():
                return self.bench.model(self.bench.x).argmax(1).cpu().numpy().astype(np.int64)
        with self.bench.tf_device():
            return np.asarray(self._forward(self.bench.x)).argmax(1).astype(np.int64)

    def prepare(
        self, calls: list[tuple[str, int]], inputs: list[Any] | None = None, *, naive: bool = False
    ) -> Callable[[], None]:
        """A function replaying ``calls`` (``(kind, batch)``) bare, inputs built beforehand.

        ``inputs``: the very batches the method fed the model (as :func:`counting` captured
        them, in the memory format the toolbox chose), so that data-dependent kernel speed — a
        deleted image is mostly zeros — is not counted as overhead either way; else the
        benchmark images, repeated. ``naive``: the model as a user calls it without the
        toolbox — PyTorch on contiguous (NCHW) batches, Keras eagerly (``model(x)``).
        """
        if inputs is not None and len(inputs) == len(calls):
            batches = [(kind, xb) for (kind, _), xb in zip(calls, inputs, strict=True)]
        else:
            batches = [(kind, self.rows(b)) for kind, b in calls]
        if self.framework == "torch" and naive:
            batches = [(kind, xb.contiguous()) for kind, xb in batches]
        if self.framework == "torch":
            import torch

            model = self.bench.model
            onehots = {}
            for kind, xb in batches:
                if kind != "forward" and xb.shape[0] not in onehots:
                    onehots[xb.shape[0]] = torch.ones(xb.shape[0], device=xb.device)

            def replay() -> None:
                for kind, xb in batches:
                    if kind == "forward":
                        with torch.no_grad():
                            model(xb)
                    else:  # one forward+backward: the gradient of one logit per input
                        leaf = xb.detach().requires_grad_(True)
                        out = model(leaf)
                        torch.autograd.grad((out[:, 0] * onehots[xb.shape[0]]).sum(), leaf)
                self.bench.sync()

            return replay

        forward, gradient = self._forward, self._gradient
        if naive:
            import tensorflow as tf

            model = self.bench.model

            def forward(z: Any) -> Any:
                return model(z, training=False)

            def gradient(z: Any) -> Any:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(z)
                    score = tf.reduce_sum(model(z, training=False)[:, 0])
                return tape.gradient(score, z)

        def replay_tf() -> None:
            last = None
            with self.bench.tf_device():
                for kind, xb in batches:
                    last = forward(xb) if kind == "forward" else gradient(xb)
            if last is not None and self.bench.device == "cuda":
                last.numpy()

        return replay_tf


# -- counting forward passes ------------------------------------------------------------------
@contextlib.contextmanager
def counting(
    obj: Any, framework: str, inputs: list[Any] | None = None
) -> Iterator[list[tuple[str, int]]]:
    """Record every model pass of ``obj`` (a method or metric) as ``(kind, batch size)``.

    ``kind`` is ``"forward"`` (no gradient) or ``"gradient"`` (forward + backward). PyTorch: a
    forward pre-hook on the model sees every call, whatever route it takes. Keras: the model
    runs inside the adapter's compiled function, so the adapter's entry points are wrapped.
    With ``inputs``, a copy of each pass's input batch is appended to it, in the same order.
    """
    calls: list[tuple[str, int]] = []
    adapter = obj.adapter
    if framework == "torch":
        import torch

        def hook(_module: Any, args: Any) -> None:
            calls.append(("gradient" if torch.is_grad_enabled() else "forward", int(args[0].shape[0])))
            if inputs is not None:
                inputs.append(args[0].detach().clone())

        handle = adapter.model.register_forward_pre_hook(hook)
        try:
            yield calls
        finally:
            handle.remove()
        return

    originals = {}

    def wrap(attr: str, kind: str, batch_of: Callable[..., int]) -> None:
        original = getattr(adapter, attr)
        originals[attr] = attr in vars(adapter)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            k = kind
            if attr == "layer_activations":
                score_of = args[2] if len(args) > 2 else kwargs.get("score_of")
                k = "gradient" if score_of is not None else "forward"
            calls.append((k, batch_of(*args, **kwargs)))
            if inputs is not None:
                inputs.append(args[0].raw)  # TensorFlow tensors are immutable: no copy needed
            return original(*args, **kwargs)

        setattr(adapter, attr, wrapped)

    wrap("forward", "forward", lambda x: int(x.shape[0]))
    wrap("differentiable_forward", "gradient", lambda x: int(x.shape[0]))
    wrap("weighted_value_and_grad", "gradient", lambda x, *a, **k: int(x.shape[0]))
    wrap("weighted_layer_activations", "gradient", lambda x, *a, **k: int(x.shape[0]))
    wrap("layer_activations", "gradient", lambda x, *a, **k: int(x.shape[0]))
    # Built passes (build, model and score compiled together) run their steps in turn while
    # counting, so the model's passes go through the wrapped forward above.
    if hasattr(adapter, "forward_built_pass"):
        from xai_toolbox.extend import ModelAdapter

        originals["forward_built_pass"] = "forward_built_pass" in vars(adapter)
        adapter.forward_built_pass = functools.partial(ModelAdapter.forward_built_pass, adapter)
    try:
        yield calls
    finally:
        for attr, had_own in originals.items():
            if not had_own:
                delattr(adapter, attr)


def summarize_calls(calls: list[tuple[str, int]]) -> dict[str, Any]:
    """Counts of passes and inputs by kind, and the distinct batch sizes."""
    out: dict[str, Any] = {"passes": len(calls), "inputs": int(sum(b for _, b in calls))}
    for kind in ("forward", "gradient"):
        sizes = [b for k, b in calls if k == kind]
        if sizes:
            out[kind] = {"passes": len(sizes), "inputs": int(sum(sizes))}
    sizes = {}
    for _, b in calls:
        sizes[b] = sizes.get(b, 0) + 1
    out["batch_sizes"] = {str(b): c for b, c in sorted(sizes.items(), reverse=True)}
    return out
