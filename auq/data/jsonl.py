"""Reading JSON Lines preference files with errors that name the file and the line."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from auq.data.validation import PreferenceDataError, RowError

__all__ = ["read_jsonl_rows"]


def read_jsonl_rows(path: Path) -> tuple[list[Any], list[str]]:
    """Rows of a JSONL file (a :class:`RowError` for an unreadable line) and where each is.

    Encoding problems are errors of the file, not of a row, so they always raise.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"preference data file not found: {str(path)!r}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path} is a directory, not a JSONL file of pairs") from None
    if data.startswith(codecs.BOM_UTF8):
        raise PreferenceDataError(
            f"{path}, line 1: the file starts with a UTF-8 byte-order mark (BOM), which JSON "
            "Lines does not allow; save it as UTF-8 without a BOM (e.g. `sed -i "
            f"'1s/^\\xEF\\xBB\\xBF//' {path}`)"
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise PreferenceDataError(
            f"{path}, line 1: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
            f"JSON Lines must be UTF-8: re-encode it (e.g. `iconv -f utf-16 -t utf-8 {path}`)"
        )
    rows: list[Any] = []
    where: list[str] = []
    start = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        line_start, start = start, start + len(raw) + 1
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PreferenceDataError(
                f"{path}, line {lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                f"offset {line_start + e.start} of the file); save the file as UTF-8 (e.g. "
                f"`iconv -f latin1 -t utf-8 {path}`)"
            ) from None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            obj = RowError(None, f"invalid JSON ({e.msg}, column {e.colno})")
        if not isinstance(obj, dict | RowError):
            obj = RowError(None, f"expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
        where.append(f"{path}, line {lineno}")
    return rows, where
