"""What auq prints: the ``auq`` logger and progress bars.

Progress bars
    :func:`progress_bar` wraps ``tqdm.auto``. With ``enabled=None`` (the default
    everywhere in auq) a bar shows only on an interactive terminal or in a
    Jupyter notebook, never in logs or CI output. One switch turns them off (or
    on) everywhere: :func:`disable_progress_bars` / :func:`enable_progress_bars`,
    or the environment variable ``AUQ_DISABLE_PROGRESS_BARS=1``.

Logging
    auq logs to the standard-library logger ``"auq"`` (children ``"auq.models"``,
    …); configure it like any other (``logging.getLogger("auq").setLevel(...)``).
    Warnings a user must act on (truncated texts, skipped rows) go through
    :func:`warnings.warn` as well, so notebooks show them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

__all__ = [
    "disable_progress_bars",
    "enable_progress_bars",
    "get_logger",
    "progress_bar",
    "progress_bars_enabled",
    "show_progress",
    "warn_user",
]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: frames of decorators between auq and the user (``torch.no_grad`` on a method)
_WRAPPER_FILES = (os.path.join("torch", "utils", "_contextlib.py"),)

_ENV_SWITCH = "AUQ_DISABLE_PROGRESS_BARS"
_switch: bool | None = None  # None: follow the environment variable


def get_logger(name: str = "auq") -> logging.Logger:
    """The ``auq`` logger or one of its children (``get_logger("auq.models")``)."""
    return logging.getLogger(name)


def enable_progress_bars() -> None:
    """Allow progress bars again (they still show only on a terminal or in a notebook)."""
    global _switch
    _switch = True


def disable_progress_bars() -> None:
    """Hide every auq progress bar, whatever a call asks for."""
    global _switch
    _switch = False


def progress_bars_enabled() -> bool:
    """Whether the global switch allows progress bars."""
    if _switch is not None:
        return _switch
    return os.environ.get(_ENV_SWITCH, "").strip().lower() not in ("1", "true", "yes", "on")


def _interactive() -> bool:
    """True on a terminal (stderr is a TTY) or inside a Jupyter/IPython kernel."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def show_progress(enabled: bool | None) -> bool:
    """Resolve a ``progress=`` option: None means "on a terminal or in a notebook"."""
    if not progress_bars_enabled():
        return False
    return _interactive() if enabled is None else bool(enabled)


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    enabled: bool | None = None,
    total: int | None = None,
    desc: str | None = None,
    **kwargs: Any,
):
    """A ``tqdm.auto`` bar that is disabled unless :func:`show_progress` says otherwise.

    Parameters
    ----------
    iterable : iterable, optional
    enabled : bool or None
        True / False force the bar on / off (the global switch still wins);
        None shows it only on a terminal or in a notebook.
    total, desc, **kwargs
        Passed to ``tqdm``.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, disable=not show_progress(enabled), **kwargs)


def _user_stacklevel() -> int:
    """``stacklevel`` pointing at the first caller outside auq (and its decorators)."""
    frame, level = sys._getframe(2), 2
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not (name.startswith(_PACKAGE_DIR) or name.endswith(_WRAPPER_FILES)):
            break
        frame, level = frame.f_back, level + 1
    return level


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the user's line that called into auq."""
    warnings.warn(message, category, stacklevel=_user_stacklevel())
