"""The files ``auq score`` writes: durable per-chunk writes, reading back, merging parts.

Rows
    One output row per input row, ``{"id", "row", <scored fields>, <constants>}`` in
    that order, ``row`` being the 0-based input position. Values are float32 (in JSONL
    the shortest decimal that reads back as the same float32, a non-finite one as
    ``null``; ``samples`` a list of S per row); constants are strings.

JSONL
    A chunk's lines are appended at once, flushed and ``fsync``-ed. The file only
    grows, so after a kill at any moment it holds complete lines plus at most one torn
    last line: :func:`jsonl_rows` reads back the complete lines and
    :func:`drop_torn_tail` cuts the file after its last newline. Under W > 1
    processes rank ``r`` appends to its own part ``<out>.rank<r>-of-<W>``
    (:func:`rank_path`; with W = 1 the part is ``<out>`` itself), and
    :func:`merge_jsonl` interleaves the parts by ``row`` (a streaming k-way merge).

Parquet
    Each chunk becomes ``<out>.parts/rows-<start>-<stop>.parquet``, written under a
    temporary name, ``fsync``-ed and renamed, so a part exists whole or not at all
    (:func:`parquet_parts` lists them, whichever rank wrote them);
    :func:`merge_parquet` concatenates them in row order.

A merge writes a temporary file next to ``<out>`` and renames it over ``<out>`` only
once it holds rows 0..N-1 each exactly once, then removes the parts; when it cannot,
it raises and keeps the parts for ``--resume``.
"""

from __future__ import annotations

import contextlib
import glob
import heapq
import json
import math
import mmap
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from auq.scoring.sources import StreamError, import_parquet

__all__ = [
    "append_jsonl",
    "drop_torn_tail",
    "foreign_rank_parts",
    "jsonl_rows",
    "merge_jsonl",
    "merge_parquet",
    "parquet_parts",
    "parquet_rows",
    "parts_dir",
    "rank_path",
    "write_parquet_part",
]

_PART = re.compile(r"rows-(\d+)-(\d+)\.parquet")
Rows = Iterator[tuple[str, dict[str, Any]]]  # (where, row): ("out.jsonl, line 3", {...})
Columns = Mapping[str, np.ndarray]  # float32, (N,) or (N, S) each


def rank_path(out: Path, rank: int, world: int) -> Path:
    """The JSONL part rank ``rank`` of ``world`` appends to (``out`` itself when alone)."""
    return out if world == 1 else out.with_name(f"{out.name}.rank{rank}-of-{world}")


def parts_dir(out: Path) -> Path:
    """The directory of a Parquet output's per-chunk parts."""
    return out.with_name(out.name + ".parts")


def foreign_rank_parts(out: Path, world: int) -> list[Path]:
    """JSONL parts of ``out`` left by a run with another number of processes."""
    own = {rank_path(out, r, world).name for r in range(world)}
    part = re.compile(re.escape(out.name) + r"\.rank\d+-of-\d+")
    found = out.parent.glob(f"{glob.escape(out.name)}.rank*")
    return sorted(p for p in found if part.fullmatch(p.name) and p.name not in own)


def _check_row(where: str, obj: Any) -> None:
    if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("row"), int):
        raise StreamError(
            f"{where}: not a row written by auq score (no 'id' and integer 'row'); choose "
            "another output path"
        )


# -- JSONL ---------------------------------------------------------------------------------


def append_jsonl(path: Path, ids: list[Any], start: int, columns: Columns, constants) -> None:
    """Append rows ``start, start + 1, ...`` to ``path`` as JSON lines, then fsync."""
    values = {}
    for name, v in columns.items():
        floats = [float(s) for s in v.ravel().astype(str)]  # the shortest round-tripping
        floats = [x if math.isfinite(x) else None for x in floats]
        values[name] = np.asarray(floats, dtype=object).reshape(v.shape).tolist()
    lines = (
        {"id": id_, "row": start + i, **{k: v[i] for k, v in values.items()}, **constants}
        for i, id_ in enumerate(ids)
    )
    data = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _complete_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of the lines that end in a newline (not a torn last one)."""
    if path.is_file():
        with open(path, "rb") as f:
            yield from ((n, line) for n, line in enumerate(f, start=1) if line.endswith(b"\n"))


def jsonl_rows(path: Path) -> Rows:
    """The rows of the complete lines of ``path`` (none when it does not exist)."""
    for lineno, line in _complete_lines(path):
        where = f"{path}, line {lineno}"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StreamError(f"{where}: not a row written by auq score ({err})") from None
        _check_row(where, obj)
        yield where, obj


def drop_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; the bytes dropped."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            size, keep = len(m), m.rfind(b"\n") + 1
        if keep < size:
            f.truncate(keep)
            os.fsync(f.fileno())
    return size - keep


def merge_jsonl(parts: list[Path], out: Path, n_rows: int, label: str) -> None:
    """Interleave the ranks' ``parts`` by ``row`` into ``out``; remove them."""
    streams = [((json.loads(line)["row"], line) for _, line in _complete_lines(p)) for p in parts]
    with _replacing(out) as temp, open(temp, "wb") as f:
        expected = 0
        for row, line in heapq.merge(*streams, key=lambda pair: pair[0]):
            if row != expected:
                how = "missing" if row > expected else "written twice"
                raise StreamError(
                    f"cannot merge the parts of {label}: row {expected} is {how}; the parts "
                    "are kept"
                )
            f.write(line)
            expected += 1
        _check_merged(label, expected, n_rows)
    for part in parts:
        part.unlink(missing_ok=True)


# -- Parquet -------------------------------------------------------------------------------


def write_parquet_part(
    directory: Path, ids: list[Any], start: int, columns: Columns, constants
) -> None:
    """Rows ``start, start + 1, ...`` as ``directory/rows-<start>-<stop>.parquet``, whole."""
    import pyarrow as pa

    pq, n = import_parquet("the output"), len(ids)
    data: dict[str, Any] = {
        "id": pa.array(ids),
        "row": pa.array(range(start, start + n), pa.int64()),
    }
    for name, v in columns.items():
        if v.ndim == 2:
            offsets = pa.array(np.arange(0, v.size + 1, v.shape[1]), pa.int32())
            data[name] = pa.ListArray.from_arrays(offsets, pa.array(v.ravel(), pa.float32()))
        else:
            data[name] = pa.array(v, pa.float32())
    data.update({name: pa.array([value] * n, pa.string()) for name, value in constants.items()})
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"rows-{start:012d}-{start + n:012d}.parquet"
    temp = directory / f".tmp-{final.name}"
    pq.write_table(pa.table(data), temp)
    _fsync(temp)
    os.replace(temp, final)
    _fsync_dir(directory)


def parquet_parts(directory: Path) -> dict[int, tuple[int, Path]]:
    """``{start: (stop, path)}`` of the parts written (temporary files are ignored)."""
    if not directory.is_dir():
        return {}
    matches = ((_PART.fullmatch(p.name), p) for p in directory.iterdir())
    return {int(m[1]): (int(m[2]), p) for m, p in matches if m}


def parquet_rows(path: Path) -> Rows:
    """The rows of a Parquet output file, batch by batch."""
    pq = import_parquet("the output")
    try:
        row = 0
        for batch in pq.ParquetFile(path).iter_batches():
            for obj in batch.to_pylist():
                where = f"{path}, row {row}"
                _check_row(where, obj)
                yield where, obj
                row += 1
    except StreamError:
        raise
    except (OSError, ValueError) as err:
        raise StreamError(f"{path}: not a Parquet file written by auq score ({err})") from None


def merge_parquet(directory: Path, out: Path, n_rows: int, label: str) -> None:
    """Concatenate the parts in ``directory`` in row order into ``out``; remove them."""
    pq = import_parquet("the output")
    done, expected, writer = parquet_parts(directory), 0, None
    with _replacing(out) as temp:
        try:
            for start, (stop, path) in sorted(done.items()):
                if start != expected:
                    break
                table = pq.read_table(path)
                writer = writer or pq.ParquetWriter(temp, table.schema)
                writer.write_table(table.cast(writer.schema))
                expected = stop
        finally:
            if writer is not None:
                writer.close()
        _check_merged(label, expected, n_rows)
    shutil.rmtree(directory)


# -- both ----------------------------------------------------------------------------------


def _check_merged(label: str, n: int, n_rows: int) -> None:
    if n != n_rows:
        raise StreamError(
            f"cannot merge the parts of {label}: they hold rows 0..{n - 1} in order, not all "
            f"{n_rows} rows of DATA; the parts are kept (--resume)"
        )


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temporary path next to ``out``; renamed onto it (durably) when the block succeeds."""
    temp = out.with_name(f".{out.name}.merging")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(out.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
