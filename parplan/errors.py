"""The one exception type users see: a bad spec, name, layout or number."""


class ParplanError(ValueError):
    """A user-facing error; the CLI prints it as one line ``Error: ...`` and exits non-zero."""
