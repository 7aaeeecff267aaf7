"""The plugin hooks. A plugin is any module declared under the ``xai_toolbox`` entry-point group
that implements some of these functions, decorated with :data:`xai_toolbox.hookimpl`.

Example plugin module (declared in its ``pyproject.toml`` as
``[project.entry-points.xai_toolbox] my_methods = "my_package.methods"``)::

    import xai_toolbox as xt

    class Ones(xt.AttributionMethod):
        ...

    @xt.hookimpl
    def register_methods(register):
        register("ones", Ones)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("xai_toolbox")


@hookspec
def register_methods(register: Callable[[str, type], None]) -> None:
    """Call ``register(name, cls)`` for each attribution method the plugin provides."""


@hookspec
def register_metrics(register: Callable[[str, type], None]) -> None:
    """Call ``register(name, cls)`` for each metric the plugin provides."""


@hookspec
def register_concepts(register: Callable[[str, type], None]) -> None:
    """Call ``register(name, cls)`` for each concept-extraction method the plugin provides
    (subclasses of :class:`xai_toolbox.extend.ConceptMethod`, e.g. CRAFT)."""


@hookspec
def register_featurevis(register: Callable[[str, type], None]) -> None:
    """Call ``register(name, cls)`` for each feature-visualisation method the plugin provides
    (subclasses of :class:`xai_toolbox.extend.FeatureVisualization`, e.g. MACO)."""


@hookspec
def register_frameworks(register: Callable[[Any], None]) -> None:
    """Call ``register(Framework(...))`` for each framework the plugin's adapters serve.

    The :class:`~xai_toolbox.backends.frameworks.Framework` tells the toolbox the framework's
    names and aliases, whether it is installed, its image layout, and how to build the test
    models :mod:`xai_toolbox.testing` runs the plugin contract on. A plugin that adds an
    adapter (``adapt_model``) registers its framework here.
    """


@hookspec(firstresult=True)
def adapt_model(model: Any, framework: str | None) -> Any:
    """Return a :class:`~xai_toolbox.backends.ModelAdapter` for ``model``, or ``None``.

    ``framework`` is ``None`` or the user's explicit choice, as a canonical framework name
    (``"torch"``, ``"tf"``, ``"numpy"``, or one a plugin registered).
    The first non-``None`` result wins; plugins registered later are asked first, so a
    third-party adapter can take over a model type from the built-ins.
    """
