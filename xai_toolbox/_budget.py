"""The work and memory a call implies, checked against the machine before the first model pass.

A sample count of ``10**9`` (RISE masks, integration steps, Sobol designs) or a ``batch_size``
that cannot fit would otherwise run for hours, or grow until the kernel kills the process, or
end in a bare ``MemoryError`` deep inside NumPy. :func:`check_workload` refuses such a call up
front with a :class:`~xai_toolbox.errors.WorkloadError` that says the numbers: the base classes
call it for every method (``passes_per_image() × inputs``, and the inputs of one pass), and
plugins that allocate more up front call it from ``check_call`` with their own numbers.

Limits: at most :func:`max_model_inputs` model inputs per call (default ``10**8``; the
environment variable ``XAI_TOOLBOX_MAX_MODEL_INPUTS`` changes it), and no more bytes held at
once than :func:`available_memory` reports (``MemAvailable`` of ``/proc/meminfo``, else
``os.sysconf``). The byte counts are lower bounds (what the call must hold, not the model's
own activations), so a call that is refused could not have run.
"""

from __future__ import annotations

import os

from .errors import ParameterError, WorkloadError

#: The environment variable that sets :func:`max_model_inputs`.
MAX_MODEL_INPUTS_ENV = "XAI_TOOLBOX_MAX_MODEL_INPUTS"
#: Model inputs one call may run by default: 100 million (RISE's 4000 masks on 25 000 images).
DEFAULT_MAX_MODEL_INPUTS = 10**8


def available_memory() -> int | None:
    """Bytes of memory the machine can still give this process (``None`` if unknown).

    ``MemAvailable`` from ``/proc/meminfo`` on Linux (free memory plus reclaimable caches),
    else ``os.sysconf("SC_AVPHYS_PAGES") × SC_PAGE_SIZE``.

    Example:
        >>> available_memory() > 0
        True
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def max_model_inputs() -> int:
    """The most model inputs one call may run (``XAI_TOOLBOX_MAX_MODEL_INPUTS``, default 10**8).

    Example:
        >>> max_model_inputs()
        100000000
    """
    raw = os.environ.get(MAX_MODEL_INPUTS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MODEL_INPUTS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise ParameterError(f"{MAX_MODEL_INPUTS_ENV} must be a positive integer, got {raw!r}")
    return value


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``"1.5 GiB"``.

    Example:
        >>> format_bytes(3 * 2**30)
        '3.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_workload(owner: str, *, model_inputs: int = 0, held_bytes: int = 0, cause: str = "") -> None:
    """Refuse a call that needs more than the machine can give, before any model pass.

    Args:
        owner: who asks, for the message (``"rise"``).
        model_inputs: model inputs (forward, or forward and backward passes) the call runs.
        held_bytes: bytes the call holds at once (up-front arrays, one pass's inputs): a
            lower bound, compared with the host's available memory (a GPU's memory is not
            queried: a pass too large for it is retried on halves of the batch).
        cause: the parameters behind the numbers, for the message
            (``"nb_samples=10**9 × 2 inputs"``).

    Raises:
        WorkloadError: ``model_inputs`` exceeds :func:`max_model_inputs`, or ``held_bytes``
            exceeds :func:`available_memory`.

    Example:
        >>> def check_call(self, x):            # in a method with a sample count
        ...     xe.check_workload(self.name, model_inputs=self.nb_samples * x.shape[0],
        ...                       held_bytes=self.nb_samples * 49 * 4, cause=f"nb_samples={self.nb_samples}")
    """
    because = f" ({cause})" if cause else ""
    limit = max_model_inputs()
    if model_inputs > limit:
        raise WorkloadError(
            f"{owner}: this call would run the model on {model_inputs:,} inputs{because}, more than "
            f"the limit of {limit:,} per call; lower the sample count or explain fewer inputs per "
            f"call (set {MAX_MODEL_INPUTS_ENV} to raise the limit)"
        )
    available = available_memory()
    if available is not None and held_bytes > available:
        raise WorkloadError(
            f"{owner}: this call needs at least {format_bytes(held_bytes)} of memory at once"
            f"{because}, but only {format_bytes(available)} is available; lower batch_size or the "
            "sample count, or explain fewer inputs per call"
        )
