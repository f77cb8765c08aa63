"""Row-by-row validation of preference data (used by :mod:`auq.data`).

Every failure becomes a :class:`PreferenceDataError` whose message names the row
index and the field, e.g. ``row 3, field 'chosen': empty text``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from auq.utils.validation import check_choice

__all__ = [
    "NUMERIC_COLUMNS",
    "ON_ERROR",
    "REQUIRED_COLUMNS",
    "PreferenceDataError",
]

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
NUMERIC_COLUMNS = ("margin", "weight")
ON_ERROR = ("raise", "skip")


class PreferenceDataError(ValueError):
    """Invalid preference data; the message names the row index and the field."""


class RowError(Exception):
    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason

    def message(self, row: int) -> str:
        where = f"row {row}" if self.field is None else f"row {row}, field {self.field!r}"
        return f"{where}: {self.reason}"


def check_messages(field: str | None, msgs: Sequence[Any]) -> None:
    if len(msgs) == 0:
        raise RowError(field, "malformed message list: no messages")
    for j, m in enumerate(msgs):
        bad = f"malformed message list: message {j}"
        if not isinstance(m, Mapping):
            kind = type(m).__name__
            raise RowError(field, f"{bad} is a {kind}, expected a dict with 'role', 'content'")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                kind = type(m.get(key)).__name__
                raise RowError(field, f"{bad} needs a str {key!r}, got {kind}")
        if not m["content"].strip():
            raise RowError(field, f"empty text in message {j}")


def _check_text(field: str, value: Any) -> bool:
    """Validate one text field; return True when it is conversational."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(field, "empty text" + (" (whitespace only)" if value else ""))
        return False
    if isinstance(value, list | tuple):
        check_messages(field, value)
        return True
    raise RowError(field, f"expected a str or a list of messages, got {type(value).__name__}")


def _check_number(field: str, value: Any) -> float:
    if value is None:
        raise RowError(field, "missing value (the column exists in other rows)")
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise RowError(field, f"not a number (got {type(value).__name__})")
    x = float(value)
    if not math.isfinite(x):
        raise RowError(field, f"non-finite value {x}")
    if field == "weight" and x < 0:
        raise RowError(field, f"negative weight {x}")
    return x


def _copy_text(value: Any) -> Any:
    return value if isinstance(value, str) else [dict(m) for m in value]


def require_columns(names: Sequence[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        present = ", ".join(repr(str(c)) for c in names) or "none"
        raise PreferenceDataError(
            f"missing required column {', '.join(map(repr, missing))}; columns present: {present}"
        )


def _check_row(row: Any, numeric: list[str]) -> tuple[bool, list[float]]:
    """Validate one row; return (is_conversational, numeric values)."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, Mapping):
        raise RowError(None, f"expected a mapping (dict), got {type(row).__name__}")
    for c in REQUIRED_COLUMNS:
        if c not in row:
            have = ", ".join(repr(str(k)) for k in row) or "none"
            raise RowError(c, f"missing required column {c!r}; row has columns: {have}")
    conv = _check_text("prompt", row["prompt"])
    for c in ("chosen", "rejected"):
        if _check_text(c, row[c]) != conv:
            raise RowError(c, "mixes conversational and plain text within the row")
    left, right = row["chosen"], row["rejected"]
    if (left.strip() == right.strip()) if isinstance(left, str) else list(left) == list(right):
        raise RowError("rejected", "identical to 'chosen'")
    return conv, [_check_number(c, row.get(c)) for c in numeric]


def validate_rows(rows: list[Any], on_error: str, stacklevel: int = 3) -> dict[str, Any]:
    """Validate ``rows`` (mappings, or ``RowError`` placeholders) into column state."""
    check_choice("on_error", on_error, ON_ERROR)
    if not rows:
        raise PreferenceDataError("dataset has 0 rows")
    names: dict[str, None] = {}
    for r in rows:
        if isinstance(r, Mapping):
            names.update(dict.fromkeys(map(str, r)))
    require_columns(list(names))
    numeric = [c for c in NUMERIC_COLUMNS if c in names]
    extra = [c for c in names if c not in REQUIRED_COLUMNS and c not in NUMERIC_COLUMNS]
    cols: dict[str, Any] = {c: [] for c in (*REQUIRED_COLUMNS, *numeric, *extra)}
    skipped: list[tuple[int, str | None, str]] = []
    conv: bool | None = None
    for i, row in enumerate(rows):
        try:
            kind, nums = _check_row(row, numeric)
            if conv is not None and kind != conv:
                first = "conversational" if conv else "plain"
                raise RowError("prompt", f"mixes conversational and plain rows ({first} before)")
        except RowError as err:
            if on_error == "raise":
                raise PreferenceDataError(err.message(i)) from None
            skipped.append((i, err.field, err.reason))
            continue
        conv = kind
        for c in REQUIRED_COLUMNS:
            cols[c].append(_copy_text(row[c]))
        for c, x in zip(numeric, nums, strict=True):
            cols[c].append(x)
        for c in extra:
            cols[c].append(row.get(c))
    if skipped:
        first = RowError(*skipped[0][1:]).message(skipped[0][0])
        if len(skipped) == len(rows):
            raise PreferenceDataError(f"no valid rows: all {len(rows)} rows failed; first: {first}")
        msg = f"skipped {len(skipped)} of {len(rows)} rows with invalid data (see .skipped)"
        warnings.warn(f"{msg}; first: {first}", UserWarning, stacklevel=stacklevel)
    for c in numeric:
        cols[c] = np.asarray(cols[c], dtype=np.float64)
    return {"cols": cols, "conversational": bool(conv), "skipped": skipped}
