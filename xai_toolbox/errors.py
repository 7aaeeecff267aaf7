"""One exception family for everything the toolbox rejects.

Every error a user can trigger with bad input derives from :class:`XaiToolboxError`, so
``except xt.XaiToolboxError`` catches them all, while the subclasses let callers tell a
bad tensor from a bad layer name. Validation errors are also ``ValueError``/``TypeError``
subclasses where that is the Python convention, so generic handlers keep working.
"""

from __future__ import annotations


class XaiToolboxError(Exception):
    """Base class of every error raised by xai-toolbox."""


class InputError(XaiToolboxError, ValueError):
    """The inputs (images, tabular rows, series) are not what the model/method expects."""


class InputDtypeError(InputError, TypeError):
    """The inputs are not floating point."""


class LayoutError(InputError):
    """Channels sit on the wrong axis for the model's framework (NCHW vs NHWC)."""


class NonFiniteInputError(InputError):
    """The inputs contain NaN or infinite values."""


class TargetError(XaiToolboxError, ValueError):
    """Targets have the wrong length, dtype, width or an index out of range."""


class ScoreFunctionError(XaiToolboxError, ValueError):
    """A user ``score_fn`` returned something other than one score per input."""


class ExplanationShapeError(XaiToolboxError, ValueError):
    """Explanations given to a metric do not match the inputs."""


class ParameterError(XaiToolboxError, ValueError):
    """A hyper-parameter is out of its valid range."""


class LayerError(XaiToolboxError, ValueError):
    """A layer name is unknown, or the layer is unsuitable (e.g. no spatial output for a CAM)."""


class UnsupportedModelError(XaiToolboxError, TypeError):
    """No backend adapter accepts the model, or it cannot do what the method needs."""


class WorkloadError(ParameterError):
    """A call would need more model passes or memory than the machine can give (checked before
    the first pass, with the numbers in the message)."""


class ModelLoadError(UnsupportedModelError):
    """The model file or factory could not be loaded (or loading it would be unsafe)."""


class PluginError(XaiToolboxError):
    """A plugin failed to load, registered a name twice, or misbehaved at call time."""


class ModelError(XaiToolboxError, RuntimeError):
    """The model itself failed on inputs that passed validation (e.g. a size it cannot take).

    The model's own exception is chained as ``__cause__``. Out-of-memory errors are never
    wrapped: they keep the framework's type so callers can catch them.
    """


class NonFiniteOutputError(ModelError):
    """The model returned NaN or infinite values on finite inputs (outputs or gradients), so
    the method's result is undefined: a fault of the model, not of the method."""


class UndefinedScoreWarning(UserWarning):
    """Some per-input metric scores are undefined (NaN) and left out of the mean: an empty
    mask, a constant explanation, a model that returned NaN. (A warning: not in ``__all__``.)"""


class OutOfMemoryWarning(UserWarning):
    """A forward or backward pass ran out of memory and was retried with half the batch.

    Given once per method or metric call; the results are the same as without the retry.
    Lower ``batch_size`` to avoid the retries. (A warning, so it is not in ``__all__``.)
    """


class UnknownNameError(XaiToolboxError, KeyError):
    """A method or metric name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message, adding quotes
        return str(self.args[0]) if self.args else ""


__all__ = [
    "XaiToolboxError",
    "InputError",
    "InputDtypeError",
    "LayoutError",
    "NonFiniteInputError",
    "TargetError",
    "ScoreFunctionError",
    "ExplanationShapeError",
    "ParameterError",
    "WorkloadError",
    "LayerError",
    "UnsupportedModelError",
    "ModelLoadError",
    "PluginError",
    "ModelError",
    "NonFiniteOutputError",
    "UnknownNameError",
]
