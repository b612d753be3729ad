"""Floor 0: the package version (also in pyproject.toml)."""
__version__ = "0.1.0"
