"""Row-by-row validation of preference data (used by :mod:`auq.data`).

Every failure becomes a :class:`PreferenceDataError` whose message names the row
index and the field, e.g. ``row 3, field 'chosen': empty text`` (for a file, also
where the row is: ``row 3 (prefs.jsonl, line 5), field 'chosen': empty text``).

Implicit prompts
----------------
TRL's "implicit prompt" layout has no ``prompt`` column: the prompt is the shared
start of ``chosen`` and ``rejected``. When no row has a ``prompt``, each row's
prompt is extracted the way ``trl.maybe_extract_prompt`` does it (see
:func:`extract_prompt`); a row whose ``chosen`` and ``rejected`` share no start is
an error that names the row.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from auq.utils.console import warn_user
from auq.utils.validation import check_choice

__all__ = [
    "NUMERIC_COLUMNS",
    "ON_ERROR",
    "REQUIRED_COLUMNS",
    "VALID_ROLES",
    "PreferenceDataError",
    "extract_prompt",
]

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
NUMERIC_COLUMNS = ("margin", "weight")
ON_ERROR = ("raise", "skip")
VALID_ROLES = ("system", "user", "assistant", "tool")
_ROLES_LISTED = ", ".join(map(repr, VALID_ROLES))


class PreferenceDataError(ValueError):
    """Invalid preference data; the message names the row index and the field."""


class RowError(Exception):
    """One row's problem: the field (None for the whole row) and the reason."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason

    def message(self, row: int, where: str | None = None) -> str:
        """``row 3[ (where)][, field 'x']: reason``."""
        at = f"row {row}" if where is None else f"row {row} ({where})"
        at = at if self.field is None else f"{at}, field {self.field!r}"
        return f"{at}: {self.reason}"


def check_messages(field: str | None, msgs: Sequence[Any]) -> None:
    """Validate a message list: dicts with a valid ``role`` and non-empty str ``content``."""
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
        role = m["role"]
        if role not in VALID_ROLES:
            what = "an empty role" if not role.strip() else f"unknown role {role!r}"
            raise RowError(field, f"message {j} has {what}; valid roles: {_ROLES_LISTED}")
        if not m["content"].strip():
            raise RowError(field, f"empty text in message {j}")


def _is_missing(value: Any) -> bool:
    """None, a float NaN, or pandas' ``NA`` / ``NaT`` (without importing pandas)."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, float) and math.isnan(value)


def _as_messages(value: Any) -> Any:
    """A 1-D NumPy object array (how pandas holds an Arrow list column) as a list."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype == object:
        return value.tolist()
    return value


def _check_text(field: str, value: Any) -> bool:
    """Validate one text field; return True when it is conversational."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(field, "empty text" + (" (whitespace only)" if value else ""))
        return False
    if isinstance(value, list | tuple):
        check_messages(field, value)
        return True
    if _is_missing(value):
        raise RowError(field, f"missing value ({value!r})")
    raise RowError(field, f"expected a str or a list of messages, got {type(value).__name__}")


def _check_number(field: str, value: Any) -> float:
    """A finite float (weight ≥ 0) from a real number or a string that holds one.

    Strings are parsed because a numeric column read from CSV, or an Arrow column
    that had one bad value, holds text in *every* row: refusing all strings would
    blame the first row and, with ``on_error="skip"``, reject every row.
    """
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        raise RowError(field, "missing value (the column exists in other rows)")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise RowError(field, f"missing value (empty text {value!r})")
        try:
            x = float(text)
        except ValueError:
            raise RowError(field, f"not a number (got str {value!r})") from None
    elif isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise RowError(field, f"not a number (got {type(value).__name__})")
    else:
        x = float(value)
    if not math.isfinite(x):
        hint = " (pandas and Arrow write a missing value as nan)" if math.isnan(x) else ""
        raise RowError(field, f"non-finite value {x}{hint}")
    if field == "weight" and x < 0:
        raise RowError(field, f"negative weight {x}")
    return x


def _copy_text(value: Any) -> Any:
    return value if isinstance(value, str) else [dict(m) for m in value]


def require_columns(names: Sequence[str]) -> None:
    """Raise unless ``chosen`` and ``rejected`` are present (``prompt`` may be implicit)."""
    missing = [c for c in REQUIRED_COLUMNS[1:] if c not in names]
    if missing:
        if "prompt" not in names:
            missing.insert(0, "prompt")
        present = ", ".join(repr(str(c)) for c in names) or "none"
        raise PreferenceDataError(
            f"missing required column {', '.join(map(repr, missing))}; columns present: {present}"
        )


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split TRL's implicit prompt off two texts (or two message lists) that share a start.

    The prompt is the longest common prefix — characters for strings, whole
    messages for conversations — with TRL's two adjustments: when the texts first
    differ just after a space, the space stays with the responses; and when one
    text is a prefix of the other, the last shared element stays with the
    responses, so neither is left empty.

    Returns
    -------
    prompt, chosen, rejected
        The same kind (str or list of messages) as the inputs.

    Raises
    ------
    RowError
        When the two share no start (or only whitespace).
    """
    n = min(len(chosen), len(rejected))
    diff = next((i for i in range(n) if chosen[i] != rejected[i]), None)
    if diff is None:
        cut = n - 1
    elif diff > 0 and isinstance(chosen, str) and chosen[diff - 1] == " ":
        cut = diff - 1
    else:
        cut = diff
    prompt = chosen[:cut]
    if cut <= 0 or (isinstance(prompt, str) and not prompt.strip()):
        unit = "text" if isinstance(chosen, str) else "leading messages"
        raise RowError(
            "prompt",
            f"there is no 'prompt' column and 'chosen' and 'rejected' share no {unit} to take "
            "it from; add a 'prompt' column, or begin both with the same prompt (TRL's "
            "implicit-prompt layout)",
        )
    return prompt, chosen[cut:], rejected[cut:]


def _implicit(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with a ``prompt`` extracted from its ``chosen`` and ``rejected``."""
    left, right = _as_messages(row["chosen"]), _as_messages(row["rejected"])
    if _check_text("chosen", left) != _check_text("rejected", right):
        raise RowError("rejected", "mixes conversational and plain text within the row")
    prompt, left, right = extract_prompt(left, right)
    return {"prompt": prompt, **row, "chosen": left, "rejected": right}


def _check_row(row: Any, numeric: list[str], implicit: bool) -> tuple[Any, bool, list[float]]:
    """Validate one row; return (row, is_conversational, numeric values)."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, Mapping):
        raise RowError(None, f"expected a mapping (dict), got {type(row).__name__}")
    for c in REQUIRED_COLUMNS[int(implicit) :]:
        if c not in row:
            have = ", ".join(repr(str(k)) for k in row) or "none"
            raise RowError(c, f"missing required column {c!r}; row has columns: {have}")
    if implicit:
        row = _implicit(row)
    else:
        row = {**row, **{c: _as_messages(row[c]) for c in REQUIRED_COLUMNS}}
    conv = _check_text("prompt", row["prompt"])
    for c in ("chosen", "rejected"):
        if _check_text(c, row[c]) != conv:
            hint = (
                "; if 'chosen' and 'rejected' already hold the whole conversation, drop the "
                "'prompt' column and the prompt is taken from their shared start"
                if not conv
                else ""
            )
            raise RowError(c, f"mixes conversational and plain text within the row{hint}")
    left, right = row["chosen"], row["rejected"]
    if (left.strip() == right.strip()) if isinstance(left, str) else list(left) == list(right):
        raise RowError("rejected", "identical to 'chosen'")
    return row, conv, [_check_number(c, row.get(c)) for c in numeric]


def validate_rows(
    rows: list[Any], on_error: str, *, where: Sequence[str] | None = None
) -> dict[str, Any]:
    """Validate ``rows`` (mappings, or ``RowError`` placeholders) into column state.

    Parameters
    ----------
    rows : list
        One mapping per row, or a :class:`RowError` for a row that could not be read.
    on_error : {"raise", "skip"}
    where : sequence of str, optional
        Per row, where it came from (``"prefs.jsonl, line 5"``), for the messages.
    """
    check_choice("on_error", on_error, ON_ERROR)
    if not rows:
        raise PreferenceDataError("no rows: a preference dataset needs at least one pair")
    names: dict[str, None] = {}
    for r in rows:
        if isinstance(r, Mapping):
            names.update(dict.fromkeys(map(str, r)))
    if not names:  # no row is a mapping: let the first row's own error speak
        names = dict.fromkeys(REQUIRED_COLUMNS)
    require_columns(list(names))
    implicit = "prompt" not in names
    numeric = [c for c in NUMERIC_COLUMNS if c in names]
    extra = [c for c in names if c not in REQUIRED_COLUMNS and c not in NUMERIC_COLUMNS]
    cols: dict[str, Any] = {c: [] for c in (*REQUIRED_COLUMNS, *numeric, *extra)}
    skipped: list[tuple[int, str | None, str]] = []
    conv: bool | None = None

    def message(i: int, err: RowError) -> str:
        return err.message(i, None if where is None else where[i])

    for i, row in enumerate(rows):
        try:
            row, kind, nums = _check_row(row, numeric, implicit)
            if conv is not None and kind != conv:
                first = "conversational" if conv else "plain"
                raise RowError("prompt", f"mixes conversational and plain rows ({first} before)")
        except RowError as err:
            if on_error == "raise":
                raise PreferenceDataError(message(i, err)) from None
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
        first = message(skipped[0][0], RowError(*skipped[0][1:]))
        if len(skipped) == len(rows):
            raise PreferenceDataError(f"no valid rows: all {len(rows)} rows failed; first: {first}")
        msg = f"skipped {len(skipped)} of {len(rows)} rows with invalid data (see .skipped)"
        warn_user(f"{msg}; first: {first}")
    for c in numeric:
        cols[c] = np.asarray(cols[c], dtype=np.float64)
    return {"cols": cols, "conversational": bool(conv), "skipped": skipped}
