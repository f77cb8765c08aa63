"""Reading and writing checkpoint files with errors that name the file.

Checkpoints are safetensors + JSON and nothing else: :func:`read_json` and
:func:`load_safetensors` turn a missing, truncated or malformed file into a
:class:`CheckpointError` whose message names the file and what is wrong;
:func:`write_json` writes strict JSON (``NaN`` / ``inf`` become ``null``) atomically.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointError",
    "atomic_write_text",
    "load_safetensors",
    "read_json",
    "strict_json",
    "write_json",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or does not match its config."""


def read_json(path: str | Path, *, what: str = "JSON file", required: tuple[str, ...] = ()) -> Any:
    """Parse ``path``; a missing, malformed or incomplete file raises :class:`CheckpointError`.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is, for the message ("model config", ...).
    required : tuple of str
        Keys the top-level object must have.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: {what} is not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: {what} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "the file may be truncated or edited by hand"
        ) from None
    if required:
        if not isinstance(value, dict):
            kind = type(value).__name__
            raise CheckpointError(f"{path}: {what} must be a JSON object, got {kind}")
        missing = [k for k in required if k not in value]
        if missing:
            listed = ", ".join(map(repr, missing))
            raise CheckpointError(f"{path}: {what} lacks the key(s) {listed}")
    return value


def load_safetensors(path: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    """Tensors of a safetensors file; a missing or damaged file raises :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file is missing")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated — save the "
            "model again"
        ) from None


def strict_json(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts: NaN/inf → None.

    NumPy scalars and arrays become Python numbers and lists.
    """
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # NumPy / torch values
        return strict_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a torn file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, value: Any, *, indent: int = 2) -> None:
    """Write strict JSON (no NaN; see :func:`strict_json`) atomically."""
    atomic_write_text(path, json.dumps(strict_json(value), indent=indent, allow_nan=False) + "\n")
