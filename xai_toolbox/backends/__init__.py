"""Framework adapters and frameworks. :func:`adapt` picks an adapter through the
``adapt_model`` plugin hook; frameworks come from the ``register_frameworks`` hook."""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError, UnsupportedModelError
from .adapter import ModelAdapter, OutputSelector, output_selector
from .frameworks import Framework


def _registry() -> Any:
    from ..registry import get_registry

    return get_registry()


def frameworks(*, installed: bool = False) -> list[Framework]:
    """Every registered framework (``installed``: only those importable here), by name.

    Example:
        >>> [f.name for f in frameworks()]
        ['numpy', 'tf', 'torch']
    """
    found = [entry.obj for _, entry in sorted(_registry().frameworks.items())]
    return [f for f in found if f.available()] if installed else found


def canonical_framework(name: str) -> str:
    """The canonical name of a framework from any of its registered spellings ("pytorch" →
    "torch", "keras"/"tensorflow" → "tf"); unknown names are returned lower-cased, as given.

    Example:
        >>> canonical_framework("PyTorch")
        'torch'
    """
    wanted = str(name).lower()
    for framework in frameworks():
        if wanted in framework.spellings():
            return framework.name
    return wanted


def framework_info(name: str) -> Framework:
    """The registered :class:`Framework` called ``name`` (any spelling), or a
    :class:`~xai_toolbox.errors.ParameterError` listing the registered ones.

    Example:
        >>> framework_info("keras").display_name
        'TensorFlow/Keras'
    """
    canonical = canonical_framework(name)
    for framework in frameworks():
        if framework.name == canonical:
            return framework
    known = ", ".join(f"{f.name!r} ({f.display_name})" for f in frameworks()) or "none"
    raise ParameterError(f"unknown framework {name!r}; registered frameworks: {known}")


def native_framework(x: Any) -> Framework | None:
    """The registered framework whose native tensor ``x`` is (``None`` for NumPy arrays and
    anything else).

    Example:
        >>> native_framework(torch.zeros(1)).channel_axis
        1
    """
    for framework in frameworks():
        if framework.is_native is not None and framework.is_native(x):
            return framework
    return None


def frameworks_where(capability: str) -> list[str]:
    """Display names of the registered frameworks with ``capability`` (e.g. ``"gradients"``).

    Used in messages, so they name what is installed rather than a fixed list.
    """
    attribute = {"supports_gradients": "gradients"}.get(capability, capability)
    return [f.display_name for f in frameworks() if getattr(f, attribute, False)]


def adapt(
    model: Any,
    framework: str | None = None,
    output: OutputSelector = None,
    *,
    compile: bool | None = None,
    memory_format: str | None = None,
) -> ModelAdapter:
    """The adapter for ``model``: the first plugin's ``adapt_model`` that accepts it.

    ``framework`` (any registered spelling: "torch", "pytorch", "tf", "keras", "numpy", ...)
    forces a choice where a model could fit several. ``output`` picks the tensor to explain
    among structured model outputs (a key, an index or a callable; ``None``: the obvious one,
    see :func:`~xai_toolbox.extend.select_output`). An adapter passed in is returned as is
    (with ``output`` given: a copy selecting it).

    Speed options (see :meth:`~xai_toolbox.extend.ModelAdapter.configure`); pass the adapter
    to any method or metric in place of the model:

    * ``compile=True``: ``torch.compile`` of the forward and gradient passes (PyTorch), XLA
      ``jit_compile`` of the compiled passes (Keras on TensorFlow). Opt-in: the first call of
      each input shape pays for the compilation (seconds to a minute), so it pays for long
      runs on one input shape only (see the benchmarks page).
    * ``memory_format``: PyTorch image batches ``"auto"`` (default: a convolutional model runs
      on channels-last batches on CUDA, as given elsewhere), ``"measure"`` (a short timing of
      both layouts on the first passes of each input shape picks the faster: worth it on CPUs
      where channels-last pays, at the cost of a few extra passes the model sees once),
      ``"channels_last"`` or ``"contiguous"`` (always that layout). Keras models are
      channels-last already (``"auto"`` only).

    ``None`` (the default of both) keeps what an adapter passed in has (else ``False`` and
    ``"auto"``).

    Example:
        >>> adapter = adapt(model)            # TorchAdapter, KerasAdapter, NumpyAdapter, ...
        >>> adapter.framework, adapter.channel_axis
        ('torch', 1)
        >>> adapt(hf_model, output="logits").output
        'logits'
        >>> explainer = xt.Rise(adapt(model, compile=True), nb_samples=4000)
    """
    output = output_selector("output", output)
    if isinstance(model, ModelAdapter):
        adapter = model if output is None else model.with_output(output)
        return _configured(adapter, compile, memory_format)
    fw = canonical_framework(framework) if framework else None
    if fw is not None:
        framework_info(fw)  # an unknown name fails here, listing the registered frameworks
    adapter = _registry().hook.adapt_model(model=model, framework=fw)
    if adapter is None:
        accepted = [f.models or f.display_name for f in frameworks() if f.available()]
        forced = f" as framework {fw!r}" if fw else ""
        raise UnsupportedModelError(
            f"no backend accepts a model of type {type(model).__module__}.{type(model).__qualname__}"
            f"{forced}; expected {', '.join(accepted) or 'a model of a registered framework'}"
        )
    adapter = adapter if output is None else adapter.with_output(output)
    return _configured(adapter, compile, memory_format)


def _configured(adapter: ModelAdapter, compile: bool | None, memory_format: str | None) -> ModelAdapter:
    if compile is None and memory_format is None:
        return adapter
    return adapter.configure(
        compile=adapter.compile if compile is None else compile,
        memory_format=adapter.memory_format if memory_format is None else memory_format,
    )


__all__ = [
    "Framework",
    "ModelAdapter",
    "adapt",
    "canonical_framework",
    "framework_info",
    "frameworks",
    "frameworks_where",
    "native_framework",
]
