"""Reading the rows ``auq score`` scores, a chunk at a time, every bad row named.

Files
    JSONL: one JSON object per line, UTF-8 without a byte-order mark; blank lines are
    skipped and are not rows. Parquet (a name ending in ``.parquet`` / ``.pq``; needs
    ``pyarrow``): the columns ``prompt``, ``response`` and the id column, read a record
    batch at a time. Neither is loaded whole.

Rows
    ``prompt`` and ``response`` are both a str or both a list of ``{"role", "content"}``
    messages (an empty response is refused, an empty prompt is not). The id is the
    ``id_field`` when the first row has one — then every row needs one, all str or all
    integers — else the 0-based row number, and then no row may have one.

Errors
    A bad row raises :class:`StreamError` naming the row, the file, the line (JSONL)
    and the field — ``row 4 (data.jsonl, line 5), field 'response': empty text`` — and
    is never skipped. :func:`open_source` checks the file and its first row before any
    model loads and counts the rows cheaply (lines, or Parquet metadata);
    :meth:`RowSource.raw_chunks` reads lazily and :meth:`RowSource.parse` validates one
    chunk, so each process parses only the chunks it scores.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auq.data.validation import RowError, check_messages

__all__ = [
    "Chunk",
    "RawChunk",
    "RowSource",
    "StreamError",
    "import_parquet",
    "is_parquet",
    "open_source",
]


class StreamError(ValueError):
    """Bad input data, or an output that cannot be written or resumed (names the file)."""


def is_parquet(path: str | Path) -> bool:
    """Whether ``path`` names a Parquet file (by its suffix)."""
    return Path(path).suffix.lower() in (".parquet", ".pq")


def import_parquet(what: str) -> Any:
    """``pyarrow.parquet``, or a :class:`StreamError` saying that ``what`` needs it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise StreamError(
            f"{what} is Parquet, which needs the package 'pyarrow': pip install pyarrow "
            "(or use JSONL)"
        ) from None
    return pq


@dataclass
class RawChunk:
    """Chunk ``index``: the rows from input position ``start`` as read, not yet parsed.

    ``items`` are ``(line number, bytes)`` for JSONL, one dict per row for Parquet.
    """

    index: int
    start: int
    items: list[Any]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Chunk:
    """The parsed rows of chunk ``index``: N ids, prompts and responses from ``start``."""

    index: int
    start: int
    ids: list[Any]
    prompts: list[Any]
    responses: list[Any]

    def __len__(self) -> int:
        return len(self.ids)

    def pairs(self) -> Iterator[tuple[int, Any]]:
        """``(input position, id)`` of each row."""
        return enumerate(self.ids, start=self.start)


def _decode_json_line(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8").rstrip("\r\n")  # error columns count from this line
    except UnicodeDecodeError as err:
        where = f"byte 0x{raw[err.start]:02x} at column {err.start + 1}"
        raise RowError(None, f"not valid UTF-8 ({where})") from None
    if text.startswith("\ufeff"):
        raise RowError(
            None,
            "the line starts with a UTF-8 byte-order mark (BOM), which JSON Lines does not "
            "allow; save the file as UTF-8 without a BOM",
        )
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise RowError(None, f"invalid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(obj, dict):
        raise RowError(None, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_text(name: str, value: Any, *, allow_empty: bool = False) -> bool:
    """Validate one text field; True when it is a message list."""
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise RowError(name, "empty text" + (" (whitespace only)" if value else ""))
        return False
    if isinstance(value, list | tuple):
        check_messages(name, value)
        return True
    if value is None:
        raise RowError(name, "missing value (null)")
    raise RowError(name, f"expected a str or a list of messages, got {type(value).__name__}")


@dataclass
class RowSource:
    """A JSONL or Parquet file of rows to score (build it with :func:`open_source`).

    Attributes
    ----------
    path : Path
    id_field : str
        The field holding row ids.
    n_rows : int
        Rows in the file (JSONL: non-blank lines).
    id_kind : type or None
        ``str`` or ``int`` when the ids come from ``id_field``; None when they are row
        numbers (the first row has no ``id_field``).
    """

    path: Path
    id_field: str = "id"
    n_rows: int = 0
    id_kind: type | None = None

    @property
    def is_parquet(self) -> bool:
        return is_parquet(self.path)

    def raw_chunks(self, chunk_size: int) -> Iterator[RawChunk]:
        """Chunks of ``chunk_size`` rows (the last may be shorter), read lazily."""
        if self.is_parquet:
            pf = import_parquet(f"DATA {str(self.path)!r}").ParquetFile(self.path)
            names = set(pf.schema_arrow.names)
            columns = [c for c in ("prompt", "response", self.id_field) if c in names]
            batches = pf.iter_batches(batch_size=chunk_size, columns=columns)
            items: Iterator[Any] = (row for batch in batches for row in batch.to_pylist())
        else:
            items = self._jsonl_lines()
        for index in itertools.count():
            batch = list(itertools.islice(items, chunk_size))
            if not batch:
                return
            yield RawChunk(index, index * chunk_size, batch)

    def _jsonl_lines(self) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as f:
            yield from ((lineno, raw) for lineno, raw in enumerate(f, start=1) if raw.strip())

    def parse(self, raw: RawChunk) -> Chunk:
        """Validate the rows of ``raw``.

        Raises
        ------
        StreamError
            ``row 4 (data.jsonl, line 5), field 'response': ...`` for the first bad row.
        """
        chunk = Chunk(raw.index, raw.start, [], [], [])
        for row, item in enumerate(raw.items, start=raw.start):
            where = str(self.path)
            try:
                if self.is_parquet:
                    obj = item
                else:
                    where = f"{self.path}, line {item[0]}"
                    obj = _decode_json_line(item[1])
                for name in ("prompt", "response"):
                    if name not in obj:
                        have = ", ".join(repr(str(k)) for k in obj) or "none"
                        raise RowError(name, f"missing; the row has fields {have}")
                conversational = _check_text("prompt", obj["prompt"], allow_empty=True)
                if _check_text("response", obj["response"]) != conversational:
                    raise RowError(
                        "response",
                        "mixes a message list and a plain str with 'prompt'; give both as "
                        "str or both as lists of messages",
                    )
                chunk.ids.append(self._row_id(row, obj.get(self.id_field)))
            except RowError as err:
                raise StreamError(err.message(row, where)) from None
            chunk.prompts.append(obj["prompt"])
            chunk.responses.append(obj["response"])
        return chunk

    def _row_id(self, row: int, value: Any) -> Any:
        name = self.id_field
        if self.id_kind is None:
            if value is not None:
                raise RowError(
                    name,
                    "present, but the first row has no id, so row numbers are the ids; give "
                    "every row an id or none",
                )
            return row
        if value is None:
            raise RowError(name, "missing (the first row has an id, so every row needs one)")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RowError(name, f"expected a str or an integer id, got {type(value).__name__}")
        if not isinstance(value, self.id_kind):
            raise RowError(
                name,
                f"is a {type(value).__name__} but the first row's id is a "
                f"{self.id_kind.__name__}; ids must be all strings or all integers",
            )
        return value


def open_source(path: str | Path, *, id_field: str = "id", name: str = "DATA") -> RowSource:
    """Check a JSONL or Parquet file, its columns and its first row; count its rows.

    Parameters
    ----------
    path : str or Path
    id_field : str
        The field holding row ids (when the first row lacks it, ids are row numbers).
    name : str
        How messages call the file (``"DATA"``).

    Raises
    ------
    FileNotFoundError, StreamError
        A missing file, a directory, an unreadable Parquet file, no rows, a bad first row.
    """
    path = Path(path).expanduser()
    label = f"{name} {str(path)!r}"
    if not isinstance(id_field, str) or not id_field:
        raise StreamError(f"the id field must be a non-empty name, got {id_field!r}")
    if path.is_dir():
        raise StreamError(f"{label} is a directory; give a JSONL or Parquet file")
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: data file {str(path)!r} not found; give a JSONL file (or a .parquet "
            "file) with 'prompt' and 'response' fields"
        )
    pq = import_parquet(label) if is_parquet(path) else None
    try:
        if pq is None:
            with open(path, "rb") as f:
                n_rows = sum(1 for raw in f if raw.strip())
            columns = ["prompt", "response"]  # JSONL: checked row by row
        else:
            pf = pq.ParquetFile(path)
            n_rows, columns = pf.metadata.num_rows, pf.schema_arrow.names
    except (OSError, ValueError) as err:
        kind = "JSONL" if pq is None else "Parquet"
        raise StreamError(
            f"{label} is not a readable {kind} file ({type(err).__name__}: {err})"
        ) from None
    if n_rows == 0:
        raise StreamError(f"{label} has no rows to score")
    for column in ("prompt", "response"):
        if column not in columns:
            have = ", ".join(map(repr, columns)) or "none"
            raise StreamError(f"{label} has no column {column!r}; columns: {have}")
    source = RowSource(path, id_field, n_rows)
    first = next(source.raw_chunks(1))
    with contextlib.suppress(RowError):  # a bad first line is named by parse() below
        item = first.items[0]
        value = (item if pq else _decode_json_line(item[1])).get(id_field)
        source.id_kind = None if value is None else str if isinstance(value, str) else int
    source.parse(first)  # the first row must be readable before any model loads
    return source
