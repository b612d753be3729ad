"""The ``parplan`` command line: thin click commands over the library (``parplan.cli:main``)."""
from .commands import cli, main

__all__ = ["cli", "main"]
