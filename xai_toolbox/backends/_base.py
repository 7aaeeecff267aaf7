"""The contract every framework adapter fulfils.

An adapter owns everything framework-specific: moving data to the model's device, forward
passes in eval mode, gradients with respect to inputs or inner activations, and layer lookup.
Methods and metrics see only :mod:`eagerpy` tensors and this interface, which is why one
implementation of each method runs on every framework.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import eagerpy as ep
import numpy as np

from ..errors import LayerError, UnsupportedModelError

#: ``fn(outputs) -> scores``: maps model outputs ``(B, K)`` to one score per input ``(B,)``.
ScoreOf = Callable[[ep.Tensor], ep.Tensor]


class ModelAdapter(ABC):
    """Wraps one model of one framework behind the interface the methods use.

    Subclasses set :attr:`framework` and :attr:`channel_axis` and implement the abstract
    methods. All tensors in and out are :class:`eagerpy.Tensor` on the model's device.
    """

    framework: ClassVar[str]
    #: Name of the framework as users spell it in messages ("PyTorch", "TensorFlow/Keras").
    display_name: ClassVar[str]
    #: Whether the model can be differentiated (white-box methods need it).
    supports_gradients: ClassVar[bool] = True

    def __init__(self, model: Any, channel_axis: int) -> None:
        self.model = model
        #: Axis of the channels in image (rank 4) and series (rank 3) inputs.
        self.channel_axis = channel_axis

    # -- data --------------------------------------------------------------------------
    @abstractmethod
    def is_native(self, x: Any) -> bool:
        """Whether ``x`` is a tensor of this adapter's framework."""

    @abstractmethod
    def to_model(self, x: Any) -> ep.Tensor:
        """Convert a native tensor or NumPy array to a float32 tensor on the model's device."""

    @abstractmethod
    def restore(self, t: ep.Tensor, like: Any) -> Any:
        """Return ``t`` with the type and device of ``like`` (a native tensor or NumPy array)."""

    def from_numpy(self, like: ep.Tensor, a: np.ndarray) -> ep.Tensor:
        """A NumPy array as a tensor on the same device as ``like``."""
        return ep.from_numpy(like, np.ascontiguousarray(a))

    # -- model -------------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs for ``x`` (one pass, no gradient tracking, eval mode)."""

    def value_and_grad(
        self, fn: Callable[[ep.Tensor], ep.Tensor], x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor]:
        """``fn(x)`` (shape ``(B,)``) and the gradient of ``fn(x).sum()`` with respect to ``x``.

        ``fn`` may call :meth:`differentiable_forward` and any EagerPy operation. Parameters
        of the model never receive a ``.grad``.
        """
        raise UnsupportedModelError(self._no_gradients_message())

    def differentiable_forward(self, x: ep.Tensor) -> ep.Tensor:
        """Model outputs for ``x`` inside :meth:`value_and_grad` (gradients tracked)."""
        raise UnsupportedModelError(self._no_gradients_message())

    def layer_activations(
        self, x: ep.Tensor, layer: str, score_of: ScoreOf | None = None
    ) -> tuple[ep.Tensor, ep.Tensor | None, ep.Tensor]:
        """Activations of ``layer`` for ``x``, their gradient, and the model outputs.

        With ``score_of`` the gradient of ``score_of(outputs).sum()`` with respect to the
        activations is returned too (else ``None``). Activations keep the framework's own
        layout (channels at :attr:`channel_axis`).
        """
        raise UnsupportedModelError(
            f"{self.display_name} models given as plain callables have no inner layers; "
            "use a black-box method (rise, sobol, hsic, occlusion)."
        )

    def layer_names(self) -> list[str]:
        """Names accepted by ``layer=``, in model order."""
        return []

    def default_layer(self, x: ep.Tensor) -> str:
        """The last layer whose output is spatial (rank 4 with more than one position)."""
        raise UnsupportedModelError(
            f"{self.display_name} models have no inner layers to choose from."
        )

    def output_width(self) -> int | None:
        """Number of model outputs if it can be known without running the model."""
        return None

    def expected_input(self) -> tuple[int | None, int | None]:
        """``(rank, channels)`` of the inputs the model expects, where statically known."""
        return None, None

    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Put the model in inference mode for a call and restore its state afterwards."""
        yield

    # -- helpers -----------------------------------------------------------------------
    def unknown_layer(self, layer: str) -> LayerError:
        names = self.layer_names()
        shown = ", ".join(repr(n) for n in names[:40])
        more = f" (and {len(names) - 40} more)" if len(names) > 40 else ""
        return LayerError(
            f"layer {layer!r} not found in the {self.display_name} model; "
            f"available layers: {shown}{more}"
        )

    def _no_gradients_message(self) -> str:
        return (
            f"this {self.display_name} model cannot be differentiated: gradient-based methods "
            "need a PyTorch or Keras model; use a black-box method (rise, sobol, hsic, occlusion)."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


def pick_default_layer(records: list[tuple[str, tuple[int, ...]]], channel_axis: int) -> str | None:
    """The last ``(name, shape)`` record with a rank-4 output of more than one position."""
    for name, shape in reversed(records):
        if len(shape) != 4:
            continue
        spatial = [d for i, d in enumerate(shape) if i not in (0, channel_axis % 4)]
        if np.prod(spatial) > 1:
            return name
    return None
