"""A griffe extension for the API reference: read ``Example:`` sections as examples.

The project's docstrings use Google style with a singular ``Example:`` heading, which griffe
reads as a plain admonition: the ``>>>`` lines would then render as Markdown block quotes.
Renaming the heading to ``Examples:`` at load time makes mkdocstrings render them as code.
Used by ``mkdocs.yml`` (``extensions: [scripts/griffe_examples.py]``); the sources are untouched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite ``Example:`` headings to ``Examples:`` in every loaded docstring."""

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _HEADING.sub(r"\1Examples:", docstring.value)
