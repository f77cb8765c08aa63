"""Streaming a data set of (prompt, response) rows through a scorer: resumable, one process or many.

The model-free half of ``auq score`` (:mod:`auq.cli.score` brings the model).

Reading
    :func:`open_source` checks a JSONL or Parquet file (``.parquet`` / ``.pq``; Parquet
    needs ``pyarrow``) and its first row, and counts its rows cheaply (lines / Parquet
    metadata). :meth:`RowSource.raw_chunks` then yields chunks of ``chunk_size`` rows
    without loading the file, and :meth:`RowSource.parse` validates one chunk. Every row
    has ``prompt`` and ``response`` (a str, or a list of ``{"role", "content"}``
    messages; both of one kind) and an id: the ``id_field`` when the first row has it
    (then every row needs one, all str or all integers), else the 0-based row number.
    A bad row raises :class:`StreamError` naming the file, the line (JSONL) or row
    (Parquet) and the field — never skipped.

Writing
    One output row per input row, ``{"id", "row", <scored fields>, <constants>}``,
    ``row`` being the 0-based input position. JSONL is appended one ``write`` per
    chunk, then flushed and ``fsync``-ed: after a kill at any moment the file holds
    complete lines plus at most one torn last line. Parquet (``--out`` ending in
    ``.parquet``) writes one part per chunk into ``<out>.parts/`` (a temporary name
    renamed atomically) and merges the parts into ``<out>`` at the end.

Resuming
    ``resume=True`` reads what is already written (a torn JSONL line is dropped by
    truncating the file to its last newline), checks that those rows carry the ids of
    the input rows at their positions — else "the output was written for other data" —
    and goes on after them: every row exactly once. A chunk that was partly written is
    scored whole again (so its values equal an uninterrupted run's) and only its
    missing rows are written. Without ``resume``, an output that holds rows is refused.

Many processes
    Under ``torchrun`` / ``accelerate launch`` (see :mod:`auq.scoring.distributed`)
    chunk ``c`` goes to rank ``c % world``. For JSONL each rank appends to its own part
    ``<out>.rank<r>-of-<world>`` (resumable the same way); after a barrier rank 0 merges
    the parts by ``row`` (a streaming k-way merge) into ``<out>`` and removes them. One
    code path: a single process is world size 1, whose part is ``<out>`` itself.
"""

from __future__ import annotations

import contextlib
import glob
import heapq
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auq.data.validation import RowError, check_messages
from auq.utils.console import get_logger, progress_bar

__all__ = [
    "PARQUET_SUFFIXES",
    "Chunk",
    "RawChunk",
    "RowSource",
    "ScoreStream",
    "ScoredChunk",
    "StreamError",
    "StreamResult",
    "is_parquet",
    "open_source",
]

PARQUET_SUFFIXES = (".parquet", ".pq")
_PART = re.compile(r"rows-(\d+)-(\d+)\.parquet")
_log = get_logger("auq.scoring")


class StreamError(ValueError):
    """Bad input data, or an output that cannot be written or resumed (names the file)."""


def is_parquet(path: str | Path) -> bool:
    """Whether ``path`` names a Parquet file (by its suffix)."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def _parquet(what: str) -> Any:
    """``pyarrow.parquet``, or a one-line error naming the missing package."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise StreamError(
            f"{what} is Parquet, which needs the package 'pyarrow': pip install pyarrow "
            "(or use JSONL)"
        ) from None
    return pq


# -- reading -------------------------------------------------------------------------------


@dataclass
class RawChunk:
    """Rows ``[start, start + len(items))`` as read, not yet parsed.

    Attributes
    ----------
    index : int
        Chunk number ``c`` (rank ``c % world`` scores it).
    start : int
        Input position of its first row.
    items : list
        JSONL: ``(line number, bytes)``; Parquet: one dict per row.
    """

    index: int
    start: int
    items: list[Any]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Chunk:
    """Parsed rows of one chunk: N ids, prompts and responses (str or message lists)."""

    index: int
    start: int
    ids: list[Any]
    prompts: list[Any]
    responses: list[Any]

    def __len__(self) -> int:
        return len(self.ids)


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


def _decode_json_line(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8").rstrip("\r\n")  # columns are of this line
    except UnicodeDecodeError as err:
        raise RowError(
            None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
        ) from None
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


@dataclass
class RowSource:
    """A JSONL or Parquet file of rows to score (build it with :func:`open_source`).

    Attributes
    ----------
    path : Path
    id_field : str
        Column holding the row ids.
    n_rows : int
        Rows in the file (JSONL: non-blank lines).
    ids_from_field : bool
        Whether the ids come from ``id_field`` (the first row has it) or are row numbers.
    id_kind : type
        ``str`` or ``int``: the kind of every id.
    """

    path: Path
    id_field: str = "id"
    n_rows: int = 0
    ids_from_field: bool = False
    id_kind: type = int

    @property
    def is_parquet(self) -> bool:
        return is_parquet(self.path)

    # -- chunks --------------------------------------------------------------------------
    def raw_chunks(self, chunk_size: int) -> Iterator[RawChunk]:
        """Chunks of ``chunk_size`` rows (the last may be shorter), read lazily."""
        items = self._parquet_items(chunk_size) if self.is_parquet else self._jsonl_items()
        batch: list[Any] = []
        index = start = 0
        for item in items:
            batch.append(item)
            if len(batch) == chunk_size:
                yield RawChunk(index, start, batch)
                index, start, batch = index + 1, start + chunk_size, []
        if batch:
            yield RawChunk(index, start, batch)

    def _jsonl_items(self) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    yield lineno, raw

    def _parquet_items(self, batch_size: int) -> Iterator[dict[str, Any]]:
        pq = _parquet(f"DATA {str(self.path)!r}")
        pf = pq.ParquetFile(self.path)
        names = set(pf.schema_arrow.names)
        columns = [c for c in ("prompt", "response", self.id_field) if c in names]
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()

    def parse(self, raw: RawChunk) -> Chunk:
        """Validate the rows of ``raw``.

        Raises
        ------
        StreamError
            ``row 4 (data.jsonl, line 5), field 'response': ...`` for the first bad row.
        """
        ids, prompts, responses = [], [], []
        for offset, item in enumerate(raw.items):
            row = raw.start + offset
            id_, prompt, response = self._parse_item(row, item)
            ids.append(id_)
            prompts.append(prompt)
            responses.append(response)
        return Chunk(raw.index, raw.start, ids, prompts, responses)

    def _parse_item(self, row: int, item: Any) -> tuple[Any, Any, Any]:
        where = str(self.path)
        try:
            if self.is_parquet:
                obj = item
            else:
                lineno, raw = item
                where = f"{self.path}, line {lineno}"
                obj = _decode_json_line(raw)
            return self._check_row(row, obj)
        except RowError as err:
            raise StreamError(err.message(row, where)) from None

    def _check_row(self, row: int, obj: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        for name in ("prompt", "response"):
            if name not in obj:
                have = ", ".join(repr(str(k)) for k in obj) or "none"
                raise RowError(name, f"missing; the row has fields {have}")
        conversational = _check_text("prompt", obj["prompt"], allow_empty=True)
        if _check_text("response", obj["response"]) != conversational:
            raise RowError(
                "response",
                "mixes a message list and a plain str with 'prompt'; give both as str or "
                "both as lists of messages",
            )
        return self._row_id(row, obj), obj["prompt"], obj["response"]

    def _row_id(self, row: int, obj: Mapping[str, Any]) -> Any:
        name = self.id_field
        if not self.ids_from_field:
            if obj.get(name) is not None:
                raise RowError(
                    name,
                    "present, but the first row has no id, so row numbers are the ids; give "
                    "every row an id or none",
                )
            return row
        value = obj.get(name)
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

    def own_chunk_lengths(self, chunk_size: int, rank: int, world: int) -> list[tuple[int, int]]:
        """``(chunk index, rows)`` of the chunks rank ``rank`` of ``world`` scores."""
        n_chunks = -(-self.n_rows // chunk_size)
        return [
            (c, min(chunk_size, self.n_rows - c * chunk_size)) for c in range(rank, n_chunks, world)
        ]


def _count_rows(path: Path) -> int:
    if is_parquet(path):
        return _parquet(f"DATA {str(path)!r}").ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.strip())


def open_source(path: str | Path, *, id_field: str = "id", name: str = "DATA") -> RowSource:
    """Check a JSONL or Parquet file and its first row; count its rows.

    Parameters
    ----------
    path : str or Path
    id_field : str
        The field holding row ids (when the first row lacks it, ids are row numbers).
    name : str
        How messages call the file (``"DATA"``).

    Returns
    -------
    RowSource

    Raises
    ------
    FileNotFoundError, StreamError
        A missing file, a directory, an unreadable Parquet file, no rows, a bad first row.
    """
    path = Path(path).expanduser()
    if not isinstance(id_field, str) or not id_field:
        raise StreamError(f"the id field must be a non-empty name, got {id_field!r}")
    if path.is_dir():
        raise StreamError(f"{name} {str(path)!r} is a directory; give a JSONL or Parquet file")
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: data file {str(path)!r} not found; give a JSONL file (or a .parquet "
            "file) with 'prompt' and 'response' fields"
        )
    try:
        n_rows = _count_rows(path)
    except (OSError, ValueError) as err:
        if isinstance(err, StreamError):
            raise
        kind = "Parquet" if is_parquet(path) else "JSONL"
        raise StreamError(
            f"{name} {str(path)!r} is not a readable {kind} file ({type(err).__name__}: {err})"
        ) from None
    if n_rows == 0:
        raise StreamError(f"{name} {str(path)!r} has no rows to score")
    source = RowSource(path, id_field, n_rows)
    _check_columns(source, name)
    first = next(source.raw_chunks(1))
    first_id = _first_id(source, first.items[0])
    source.ids_from_field = first_id is not _ABSENT
    source.id_kind = str if isinstance(first_id, str) else int
    source.parse(first)  # the first row must be readable before any model loads
    return source


def _check_columns(source: RowSource, name: str) -> None:
    if not source.is_parquet:
        return
    names = _parquet(name).ParquetFile(source.path).schema_arrow.names
    for column in ("prompt", "response"):
        if column not in names:
            have = ", ".join(map(repr, names)) or "none"
            raise StreamError(
                f"{name} {str(source.path)!r} has no column {column!r}; columns: {have}"
            )


_ABSENT = object()


def _first_id(source: RowSource, item: Any) -> Any:
    """The first row's id field (``_ABSENT`` without one; ``parse`` names a bad line)."""
    if source.is_parquet:
        return item.get(source.id_field, _ABSENT)
    try:
        return _decode_json_line(item[1]).get(source.id_field, _ABSENT)
    except RowError:
        return _ABSENT


# -- writing -------------------------------------------------------------------------------


@dataclass
class ScoredChunk:
    """What a scorer returns for a :class:`Chunk` of N rows.

    Attributes
    ----------
    columns : dict of str to ndarray
        Per-row values, each of shape (N,) or (N, S) (e.g. ``samples``).
    counts : dict of str to int
        Counters summed over chunks and ranks into :attr:`StreamResult.counts`.
    """

    columns: dict[str, np.ndarray]
    counts: dict[str, int] = field(default_factory=dict)


def _json_values(values: np.ndarray) -> list[Any]:
    """float32 values as the shortest floats that round-trip them; non-finite as None."""
    v = np.asarray(values, dtype=np.float32)
    out = [float(s) for s in v.ravel().astype(str)]
    if not np.isfinite(v).all():
        out = [x if np.isfinite(x) else None for x in out]
    return np.asarray(out, dtype=object).reshape(v.shape).tolist()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _JsonlPart:
    """One rank's JSONL part: complete lines read back, whole chunks appended durably."""

    def __init__(self, path: Path) -> None:
        self.path, self._fd = path, None

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """``(line number, line)`` of the complete lines (a torn last line is left out)."""
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if line.endswith(b"\n"):
                    yield lineno, line

    def rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(where, row object)`` of the complete lines, each checked to be an output row."""
        for lineno, line in self.lines():
            where = f"{self.path}, line {lineno}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise StreamError(f"{where}: not a row written by auq score ({err})") from None
            _check_output_row(where, obj)
            yield where, obj

    def drop_torn_tail(self) -> int:
        """Truncate the file to its last newline; the bytes dropped."""
        if not self.path.is_file():
            return 0
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            keep, pos = 0, size
            while pos > 0:
                start = max(0, pos - (1 << 16))
                f.seek(start)
                found = f.read(pos - start).rfind(b"\n")
                if found >= 0:
                    keep = start + found + 1
                    break
                pos = start
            if keep < size:
                f.truncate(keep)
                os.fsync(f.fileno())
        return size - keep

    def append(self, data: bytes) -> None:
        """Append ``data`` with one ``write`` (looping only over short writes), then fsync."""
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _check_output_row(where: str, obj: Any) -> None:
    if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("row"), int):
        raise StreamError(
            f"{where}: not a row written by auq score (no 'id' and integer 'row'); choose "
            "another output path"
        )


class _ParquetParts:
    """``<out>.parts/rows-<start>-<stop>.parquet``: one part per chunk, renamed atomically."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def done(self) -> dict[int, tuple[int, Path]]:
        """``{start: (stop, path)}`` of the parts written (temporary files are ignored)."""
        if not self.dir.is_dir():
            return {}
        out = {}
        for path in self.dir.iterdir():
            match = _PART.fullmatch(path.name)
            if match:
                out[int(match[1])] = (int(match[2]), path)
        return out

    def write(self, start: int, table: Any) -> None:
        pq = _parquet("the output")
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"rows-{start:012d}-{start + table.num_rows:012d}.parquet"
        temp = self.dir / f".tmp-{final.name}"
        pq.write_table(table, temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, final)
        _fsync_dir(self.dir)


def _arrow_table(ids: list[Any], rows: np.ndarray, columns: dict[str, np.ndarray], constants):
    import pyarrow as pa

    data: dict[str, Any] = {"id": pa.array(ids), "row": pa.array(rows, pa.int64())}
    for name, values in columns.items():
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 2:
            flat = pa.array(values.ravel(), pa.float32())
            offsets = pa.array(np.arange(0, values.size + 1, values.shape[1]), pa.int32())
            data[name] = pa.ListArray.from_arrays(offsets, flat)
        else:
            data[name] = pa.array(values, pa.float32())
    for name, value in constants.items():
        data[name] = pa.array([value] * len(ids), pa.string())
    return pa.table(data)


# -- the stream ----------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What :meth:`ScoreStream.run` did, summed over ranks.

    Attributes
    ----------
    n_rows : int
        Rows in the input.
    rows_written : int
        Rows this run wrote.
    rows_skipped : int
        Rows already in the output (``resume``), not written again.
    rows_scored : int
        Rows run through the scorer (a partly written chunk is scored whole again).
    rows_nonfinite : int
        Written rows with a non-finite value (JSON ``null``).
    counts : dict of str to int
        The scorer's :attr:`ScoredChunk.counts`, summed.
    torn_bytes : int
        Bytes of a torn last line dropped on resume.
    seconds : float
        Wall time of the run (merge included).
    output : Path
    """

    n_rows: int
    rows_written: int
    rows_skipped: int
    rows_scored: int
    rows_nonfinite: int
    counts: dict[str, int]
    torn_bytes: int
    seconds: float
    output: Path


class ScoreStream:
    """Score a :class:`RowSource` chunk by chunk into a JSONL or Parquet file; resumable.

    Everything is checked when it is built — the output path, an existing output (refused
    without ``resume``; with it, checked against the input) — so no model needs to load
    first; :meth:`run` then scores and writes.

    Parameters
    ----------
    source : RowSource
    out : str or Path
        The output file; Parquet when it ends in ``.parquet`` / ``.pq``, else JSONL.
    fields : tuple of str
        The scored fields each row gets, in order (``("mean", "std", "samples")``).
    constants : dict of str to str, optional
        Fields with one value for every row (``{"objective": "lcb"}``).
    chunk_size : int
        Rows per chunk (each chunk is scored in one call and written at once).
    resume : bool
        Go on after the rows an interrupted run wrote.
    rank, world : int
        This process and the number of processes (``distributed_env()``).
    name : str
        How messages call the output (``"--out"``).

    Raises
    ------
    StreamError
        An output that cannot be written, that exists without ``resume``, or that was
        written for other data or with other fields.
    """

    def __init__(
        self,
        source: RowSource,
        out: str | Path,
        *,
        fields: tuple[str, ...] = ("mean", "std"),
        constants: Mapping[str, str] | None = None,
        chunk_size: int = 4096,
        resume: bool = False,
        rank: int = 0,
        world: int = 1,
        name: str = "--out",
    ) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise StreamError(f"the chunk size must be an integer >= 1, got {chunk_size!r}")
        self.source, self.out, self.name = source, Path(out).expanduser(), name
        self.fields, self.constants = tuple(fields), dict(constants or {})
        self.chunk_size, self.resume, self.rank, self.world = chunk_size, resume, rank, world
        self.parquet = is_parquet(self.out)
        if self.parquet:
            _parquet(f"{name} {str(self.out)!r}")
        self.parts = _ParquetParts(self.out.with_name(self.out.name + ".parts"))
        self.part = _JsonlPart(self._rank_path(rank))
        self.template: dict[str, Any] | None = None  # the first row already written
        self.own_done = 0  # JSONL: rows of this rank's part already written
        self.done_chunks: set[int] = set()  # Parquet: chunk starts already written
        self.finished = False  # a complete, merged output already exists
        self.torn_bytes = 0
        self._check_path()
        self._check_existing()

    # -- paths ----------------------------------------------------------------------------
    @property
    def _label(self) -> str:
        return f"{self.name} {str(self.out)!r}"

    def _rank_path(self, rank: int) -> Path:
        if self.world == 1:
            return self.out
        return self.out.with_name(f"{self.out.name}.rank{rank}-of-{self.world}")

    def _other_world_parts(self) -> list[Path]:
        if self.parquet or not self.out.parent.is_dir():
            return []
        own = {self._rank_path(r) for r in range(self.world)}
        found = self.out.parent.glob(f"{glob.escape(self.out.name)}.rank*-of-*")
        return sorted(p for p in found if p not in own)

    def _check_path(self) -> None:
        if self.out.is_dir():
            raise StreamError(f"{self._label} is a directory; give a file path (.jsonl/.parquet)")
        ancestor = self.out.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise StreamError(f"{self._label} cannot be created: {str(ancestor)!r} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise StreamError(f"{self._label} is not writable (in {str(ancestor)!r})")
        if self.out.exists() and not os.access(self.out, os.W_OK):
            raise StreamError(f"{self._label} exists and is not writable")

    # -- existing output ------------------------------------------------------------------
    def _check_existing(self) -> None:
        others = self._other_world_parts()
        if others:
            world = re.search(r"-of-(\d+)$", others[0].name)
            n = world[1] if world else "?"
            raise StreamError(
                f"{self._label} has unfinished parts of a run with {n} processes "
                f"({', '.join(p.name for p in others[:3])}); resume it with {n} processes "
                f"(torchrun --nproc-per-node {n} ... --resume), or remove them"
            )
        written = self._written_paths()
        if not written:
            return
        if not self.resume:
            raise StreamError(
                f"{self._label} already holds scored rows ({', '.join(map(str, written[:3]))}); "
                "pass --resume to go on after them, or choose another output path (an output "
                "is never overwritten)"
            )
        if self.parquet:
            self._resume_parquet()
        else:
            self._resume_jsonl()

    def _written_paths(self) -> list[Path]:
        """Non-empty files that belong to this output."""
        paths = [self.out, *(self._rank_path(r) for r in range(self.world))]
        paths = [p for p in dict.fromkeys(paths) if p.is_file() and p.stat().st_size > 0]
        if self.parts.dir.is_dir() and any(self.parts.dir.iterdir()):
            paths.append(self.parts.dir)
        return paths

    def _resume_jsonl(self) -> None:
        parts = [self._rank_path(r) for r in range(self.world)]
        if self.world > 1 and not any(p.is_file() for p in parts):
            self._check_complete(_JsonlPart(self.out).rows())
            return
        self.own_done = self._verify(self.part.rows(), self._own_rows())
        self.torn_bytes = self.part.drop_torn_tail()

    def _resume_parquet(self) -> None:
        done = self.parts.done()
        if not done:
            if self.out.is_file():
                self._check_complete(_parquet_rows(self.out))
            return
        n, size = self.source.n_rows, self.chunk_size
        for start, (stop, path) in sorted(done.items()):
            if start % size or stop != min(start + size, n):
                raise StreamError(
                    f"{self._label}: the part {path.name} does not fit chunks of {size} rows of "
                    f"DATA ({n} rows): it was written with another --chunk-size or for other "
                    "data; resume with the first run's --chunk-size, or choose another output"
                )
        own = {c * size for c, _ in self.source.own_chunk_lengths(size, self.rank, self.world)}
        self.done_chunks = {s for s in done if s in own}
        for raw in self.source.raw_chunks(size):
            if raw.start in self.done_chunks:
                chunk = self.source.parse(raw)
                self._verify(_parquet_rows(done[raw.start][1]), _pairs(chunk))
        if not self.done_chunks and done:  # this rank has none; check the fields anyway
            first = done[min(done)][1]
            self._check_template(*next(_parquet_rows(first)))

    def _own_rows(self) -> Iterator[tuple[int, Any]]:
        """``(row, id)`` of this rank's rows, in the order it writes them."""
        for raw in self.source.raw_chunks(self.chunk_size):
            if raw.index % self.world == self.rank:
                yield from _pairs(self.source.parse(raw))

    def _check_complete(self, written: Iterator[tuple[str, dict[str, Any]]]) -> None:
        """An existing merged output must hold every input row, in order."""
        every = (
            pair
            for raw in self.source.raw_chunks(self.chunk_size)
            for pair in _pairs(self.source.parse(raw))
        )
        n = self._verify(written, every)
        if n != self.source.n_rows:
            raise StreamError(
                f"{self._label} holds {n} of the {self.source.n_rows} rows of DATA and no "
                "unfinished parts of this number of processes; resume it with the number of "
                "processes that started it, or choose another output path"
            )
        self.finished = True

    def _verify(
        self, written: Iterator[tuple[str, dict[str, Any]]], expected: Iterator[tuple[int, Any]]
    ) -> int:
        """Check written rows against the input's ``(row, id)``; the number checked."""
        n = 0
        for where, obj in written:
            if n == 0:
                self._check_template(where, obj)
            want = next(expected, None)
            if want is None:
                raise StreamError(
                    f"{self._label} was written for other data: {where} holds row "
                    f"{obj['row']}, past the rows of DATA ({self.source.n_rows}) it should hold; "
                    "choose another output path"
                )
            if (obj["row"], obj["id"]) != want:
                raise StreamError(
                    f"{self._label} was written for other data: {where} holds row {obj['row']} "
                    f"with id {obj['id']!r}, but DATA row {want[0]} has id {want[1]!r}; use "
                    "the data it was written for, or choose another output path"
                )
            n += 1
        return n

    def _check_template(self, where: str, obj: dict[str, Any]) -> None:
        have, want = list(obj), ["id", "row", *self.fields, *self.constants]
        if have != want:
            raise StreamError(
                f"{self._label} was written with other options: {where} has fields "
                f"{', '.join(have)}, but this run writes {', '.join(want)}; resume with the "
                "options of the first run (--samples, --objective), or choose another output"
            )
        for key, value in self.constants.items():
            if obj[key] != value:
                raise StreamError(
                    f"{self._label} was written with other options: {where} has {key} "
                    f"{obj[key]!r}, but this run writes {value!r}; resume with the options of "
                    "the first run, or choose another output path"
                )
        self.template = obj

    # -- running --------------------------------------------------------------------------
    def run(
        self, score: Callable[[Chunk], ScoredChunk], *, progress: bool | None = None
    ) -> StreamResult:
        """Score this rank's chunks not yet written, write them, merge on rank 0.

        Parameters
        ----------
        score : callable
            :class:`Chunk` of N rows → :class:`ScoredChunk` with the :attr:`fields`.
        progress : bool or None
            Progress bar over rows (rank 0 only); None shows it only on a terminal.
        """
        began = time.perf_counter()
        _barrier(self.world)  # every rank has checked the output before any writes
        own = self.source.own_chunk_lengths(self.chunk_size, self.rank, self.world)
        total = sum(n for _, n in own)
        skipped = total if self.finished else self._skipped(own)
        tally = {"written": 0, "scored": 0, "nonfinite": 0}
        counts: dict[str, int] = {}
        bar = progress_bar(
            total=total,
            initial=skipped,
            enabled=progress if self.rank == 0 else False,
            desc="scoring",
            unit="row",
        )
        try:
            if not self.finished:
                self._score_chunks(score, bar, tally, counts)
        finally:
            bar.close()
            self.part.close()
        _barrier(self.world)
        if self.rank == 0 and not self.finished:
            self._merge()
        keys = sorted(counts)
        summed = _sum_over_ranks(
            [tally["written"], skipped, tally["scored"], tally["nonfinite"], self.torn_bytes]
            + [counts[k] for k in keys],
            self.world,
        )
        return StreamResult(
            n_rows=self.source.n_rows,
            rows_written=summed[0],
            rows_skipped=summed[1],
            rows_scored=summed[2],
            rows_nonfinite=summed[3],
            counts=dict(zip(keys, summed[5:], strict=True)),
            torn_bytes=summed[4],
            seconds=time.perf_counter() - began,
            output=self.out,
        )

    def _skipped(self, own: list[tuple[int, int]]) -> int:
        if self.parquet:
            return sum(n for c, n in own if c * self.chunk_size in self.done_chunks)
        return self.own_done

    def _score_chunks(self, score, bar, tally: dict[str, int], counts: dict[str, int]) -> None:
        left = self.own_done  # JSONL rows already in this rank's part
        for raw in self.source.raw_chunks(self.chunk_size):
            if raw.index % self.world != self.rank or raw.start in self.done_chunks:
                continue
            keep_from = min(left, len(raw))
            left -= keep_from
            if keep_from == len(raw):
                continue
            chunk = self.source.parse(raw)
            scored = score(chunk)
            self._check_scored(chunk, scored)
            tally["scored"] += len(chunk)
            for key, value in scored.counts.items():
                counts[key] = counts.get(key, 0) + int(value)
            tally["nonfinite"] += self._write(chunk, scored, keep_from)
            tally["written"] += len(chunk) - keep_from
            bar.update(len(chunk) - keep_from)

    def _check_scored(self, chunk: Chunk, scored: ScoredChunk) -> None:
        if list(scored.columns) != list(self.fields):
            raise RuntimeError(
                f"the scorer returned fields {list(scored.columns)}, expected {list(self.fields)}"
            )
        for name, values in scored.columns.items():
            if np.shape(values)[0] != len(chunk):
                raise RuntimeError(
                    f"the scorer returned {np.shape(values)[0]} values of {name!r} for a chunk "
                    f"of {len(chunk)} rows"
                )
            old = None if self.template is None else self.template.get(name)
            if isinstance(old, list) and np.ndim(values) == 2 and np.shape(values)[1] != len(old):
                raise StreamError(
                    f"{self._label} was written with {len(old)} {name} per row, but this model "
                    f"gives {np.shape(values)[1]}; resume with the same model, or choose "
                    "another output path"
                )

    def _write(self, chunk: Chunk, scored: ScoredChunk, keep_from: int) -> int:
        """Write rows ``keep_from:`` of ``chunk``; the number with a non-finite value."""
        columns = {k: np.asarray(v)[keep_from:] for k, v in scored.columns.items()}
        ids = chunk.ids[keep_from:]
        rows = np.arange(chunk.start + keep_from, chunk.start + len(chunk))
        bad = np.zeros(len(ids), dtype=bool)
        for values in columns.values():
            finite = np.isfinite(np.asarray(values, dtype=np.float32))
            bad |= ~(finite if finite.ndim == 1 else finite.all(axis=1))
        if self.parquet:
            self.parts.write(int(rows[0]), _arrow_table(ids, rows, columns, self.constants))
        else:
            self.part.append(self._jsonl_lines(ids, rows, columns))
        return int(bad.sum())

    def _jsonl_lines(self, ids: list[Any], rows: np.ndarray, columns) -> bytes:
        values = {name: _json_values(v) for name, v in columns.items()}
        lines = []
        for i, (id_, row) in enumerate(zip(ids, rows.tolist(), strict=True)):
            obj = {"id": id_, "row": row, **{k: v[i] for k, v in values.items()}}
            lines.append(json.dumps({**obj, **self.constants}, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode("utf-8")

    # -- merging --------------------------------------------------------------------------
    def _merge(self) -> None:
        if self.parquet:
            self._merge_parquet()
        elif self.world > 1:
            self._merge_jsonl()

    def _merge_jsonl(self) -> None:
        parts = [_JsonlPart(self._rank_path(r)) for r in range(self.world)]
        streams = [((json.loads(line)["row"], line) for _, line in p.lines()) for p in parts]
        with _replacing(self.out) as temp, open(temp, "wb") as f:
            expected = 0
            for row, line in heapq.merge(*streams, key=lambda pair: pair[0]):
                if row != expected:
                    how = "missing" if row > expected else "written twice"
                    raise StreamError(
                        f"cannot merge the parts of {self._label}: row {expected} is {how}; "
                        "the parts are kept"
                    )
                f.write(line)
                expected += 1
            self._check_merged(expected)
        for part in parts:
            part.path.unlink(missing_ok=True)

    def _merge_parquet(self) -> None:
        pq = _parquet("the output")
        done, expected, writer = self.parts.done(), 0, None
        with _replacing(self.out) as temp:
            try:
                for start in sorted(done):
                    if start != expected:
                        break
                    table = pq.read_table(done[start][1])
                    writer = writer or pq.ParquetWriter(temp, table.schema)
                    writer.write_table(table.cast(writer.schema))
                    expected = done[start][0]
                self._check_merged(expected)
            finally:
                if writer is not None:
                    writer.close()
        shutil.rmtree(self.parts.dir)

    def _check_merged(self, n: int) -> None:
        if n != self.source.n_rows:
            raise StreamError(
                f"cannot merge the parts of {self._label}: they hold rows 0..{n - 1} in order, "
                f"not all {self.source.n_rows} rows of DATA; the parts are kept (--resume)"
            )


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temporary path next to ``out``; renamed onto it (durably) when the block succeeds."""
    temp = out.with_name(f".{out.name}.merging")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temp
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(out.parent)


def _rows_of(chunk: Chunk) -> range:
    return range(chunk.start, chunk.start + len(chunk))


def _pairs(chunk: Chunk) -> Iterator[tuple[int, Any]]:
    return zip(_rows_of(chunk), chunk.ids, strict=True)


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row object)`` of a Parquet output file, batch by batch."""
    pq = _parquet("the output")
    try:
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches():
            for obj in batch.to_pylist():
                where = f"{path}, row {row}"
                _check_output_row(where, obj)
                yield where, obj
                row += 1
    except (OSError, ValueError) as err:
        if isinstance(err, StreamError):
            raise
        raise StreamError(f"{path}: not a Parquet file written by auq score ({err})") from None


# -- many processes ------------------------------------------------------------------------


def _barrier(world: int) -> None:
    if world == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError(
            f"world size {world} but no process group: call "
            "auq.scoring.distributed.init_distributed() first"
        )
    dist.barrier()


def _sum_over_ranks(values: list[int], world: int) -> list[int]:
    """Each value summed over every rank (the values themselves when alone)."""
    if world == 1:
        return values
    import torch
    import torch.distributed as dist

    on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu"
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
