"""How a command fails: one line on stderr, an exit status, a traceback only with ``--debug``.

Exit statuses
    0 success; 2 a user error — bad options, missing or malformed files, a damaged
    model directory, an output that cannot be written (:data:`USER_ERRORS`); 1 an
    unexpected error (a bug: the line says so and how to see the traceback);
    130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from auq.data import PreferenceDataError
from auq.utils.console import get_logger
from auq.utils.io import CheckpointError

__all__ = ["USER_ERRORS", "CliError", "one_line", "report_failures"]

EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130


class CliError(ValueError):
    """A user error found by a command (its message is printed as is)."""


#: exceptions that mean "the input is wrong", not "auq is wrong"
USER_ERRORS: tuple[type[BaseException], ...] = (
    CliError,
    PreferenceDataError,
    CheckpointError,
    OSError,
    ValueError,
)


def one_line(err: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f"missing key {err.args[0]!r}"
    return text or type(err).__name__


class _OneLineHandler(logging.Handler):
    """Log records of the ``auq`` logger (WARNING and up) as ``auq <command>: warning: ...``."""

    def __init__(self, prog: str) -> None:
        super().__init__(logging.WARNING)
        self.prog, self.shown = prog, set()

    def show(self, level: str, text: str) -> None:
        if text not in self.shown:  # auq both logs and warns what a user must act on
            self.shown.add(text)
            print(f"{self.prog}: {level}: {text}", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.show(record.levelname.lower(), " ".join(record.getMessage().split()))


@contextmanager
def _one_line_messages(prog: str) -> Iterator[None]:
    """Show warnings and auq's log warnings as single ``auq <command>: warning: ...`` lines."""
    handler = _OneLineHandler(prog)
    logger = get_logger()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        handler.show("warning", one_line(message))

    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        logger.removeHandler(handler)


def report_failures(prog: str, run: Callable[[], int], *, debug: bool = False) -> int:
    """Run a command; turn its failures into one line on stderr and an exit status.

    Parameters
    ----------
    prog : str
        ``"auq calibrate"``: the prefix of every line.
    run : callable
        The command; returns its exit status.
    debug : bool
        Re-raise instead (the traceback shows; warnings keep Python's format).
    """
    if debug:
        return run()
    try:
        with _one_line_messages(prog):
            return run()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # a bug: still one line, and the way to the traceback
        command = prog.partition(" ")[2]
        print(
            f"{prog}: error: unexpected {type(err).__name__}: {one_line(err)} (run "
            f"'auq --debug {command} ...' for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_BUG
