"""The package's version: one definition, read by pyproject.toml, ``aiodq --version`` and result.json."""

__version__ = "0.1.0"
