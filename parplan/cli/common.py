"""What every parplan command line shares: errors as one line ``Error: ...``, never a traceback."""
from __future__ import annotations

import sys
from functools import wraps

import click

from ..errors import ParplanError


def fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn):
    """A ParplanError raised by a command becomes click's one-line error with exit status 1."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ParplanError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def run(command: click.Command, argv=None, prog_name: str = "parplan") -> None:
    """Run a click command or group: exit 2 for usage errors, 1 for the rest, one line either way."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", 1)
    except click.UsageError as exc:
        fail(exc.format_message().replace("\n", " "), 2)
    except click.ClickException as exc:
        fail(exc.format_message().replace("\n", " "), 1)
    except ParplanError as exc:
        fail(str(exc), 1)
    except BrokenPipeError:
        sys.exit(0)


class FiniteRange(click.FloatRange):
    """click's FloatRange, which lets NaN through (every comparison with NaN is false); this refuses it."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


HEADROOM = FiniteRange(0, 0.9)
