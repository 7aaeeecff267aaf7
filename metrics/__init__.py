"""Built-in metrics, each module a plugin declared in ``pyproject.toml``."""
