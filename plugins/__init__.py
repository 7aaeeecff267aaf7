"""Built-in attribution methods, each module a plugin declared in ``pyproject.toml``."""
