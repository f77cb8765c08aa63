"""Streaming a data set through a scorer into a file: resumable, one process or many.

The model-free half of ``auq score`` (:mod:`auq.cli.score` brings the model). Rows are
read by :mod:`auq.scoring.sources` and written by :mod:`auq.scoring.sinks` (the file
formats); :class:`ScoreStream` runs the chunk loop between them.

Ranks
    Under ``torchrun`` / ``accelerate launch`` (:mod:`auq.scoring.distributed`) chunk
    ``c`` of ``chunk_size`` rows goes to rank ``c % W``. Each rank reads the whole file
    but parses and scores only its own chunks, and writes them to its own part; after a
    barrier rank 0 merges the parts into ``<out>`` in input order. One process is
    W = 1, whose JSONL part is ``<out>`` itself and needs no merge.

Resuming
    Everything is checked when the stream is built, before any model loads. An output
    that holds rows is refused without ``resume``. With it, each rank reads back its
    part (a torn JSONL line is dropped) and checks that

    * its rows carry the input's ``(row, id)`` at their positions, else "written for
      other data";
    * they have this run's fields and constants — ``objective`` names the penalty and
      its parameter — else "written with other options".

    It then goes on after them, so every row is written exactly once: a chunk that was
    partly written is scored whole again (its values equal an uninterrupted run's) and
    only its missing rows are written. JSONL parts of another number of processes are
    refused (their chunks were dealt differently); Parquet parts are one per chunk, so
    any number of processes resumes them, with the same ``chunk_size``. An output
    already merged is checked to hold every input row and is left as it is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auq.scoring import sinks
from auq.scoring.sources import Chunk, RawChunk, RowSource, StreamError, import_parquet, is_parquet
from auq.utils.console import progress_bar

__all__ = ["ScoreStream", "ScoredChunk", "StreamResult"]


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


@dataclass
class StreamResult:
    """What :meth:`ScoreStream.run` did, summed over ranks.

    ``rows_skipped`` were already in the output (``resume``); ``rows_scored`` went
    through the scorer (a partly written chunk is scored whole again);
    ``rows_nonfinite`` were written with a non-finite value (JSON ``null``);
    ``torn_bytes`` of a torn last line were dropped; ``seconds`` include the merge.
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

    Parameters
    ----------
    source : RowSource
    out : str or Path
        The output file; Parquet when it ends in ``.parquet`` / ``.pq``, else JSONL.
    fields : tuple of str
        The scored fields each row gets, in order (``("mean", "std", "samples")``).
    constants : dict of str to str, optional
        Fields with one value for every row (``{"objective": "lcb(k=1.0)"}``).
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
        written for other data or with other fields or constants.
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
        self.source, self.out = source, Path(out).expanduser()
        self.fields, self.constants = tuple(fields), dict(constants or {})
        self.chunk_size, self.rank, self.world = chunk_size, rank, world
        self.label = f"{name} {str(self.out)!r}"
        self.parquet = is_parquet(self.out)
        if self.parquet:
            import_parquet(self.label)
        # JSONL: each rank's part (W = 1: <out> itself); Parquet: the parts' directory
        self.rank_parts = [sinks.rank_path(self.out, r, world) for r in range(world)]
        self.part, self.parts_dir = self.rank_parts[rank], sinks.parts_dir(self.out)
        n, size = source.n_rows, chunk_size
        #: {chunk index: rows} of the chunks this rank scores, and of those already written
        self.own = {c: min(size, n - c * size) for c in range(rank, -(-n // size), world)}
        self.done: dict[int, int] = {}
        self.template: dict[str, Any] | None = None  # the first row already written
        self.finished = False  # a merged output holding every row exists
        self.torn_bytes = 0
        self._check_path()
        self._check_existing(resume)

    def _check_path(self) -> None:
        if self.out.is_dir():
            raise StreamError(f"{self.label} is a directory; give a file path (.jsonl/.parquet)")
        ancestor = self.out.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise StreamError(f"{self.label} cannot be created: {str(ancestor)!r} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise StreamError(f"{self.label} is not writable (in {str(ancestor)!r})")
        if self.out.exists() and not os.access(self.out, os.W_OK):
            raise StreamError(f"{self.label} exists and is not writable")

    # -- an existing output ---------------------------------------------------------------
    def _check_existing(self, resume: bool) -> None:
        others = sinks.foreign_rank_parts(self.out, self.world)
        if others:
            n = others[0].name.rpartition("-of-")[2]
            raise StreamError(
                f"{self.label} has unfinished parts of a run with {n} processes "
                f"({', '.join(p.name for p in others[:3])}); resume it with {n} processes "
                f"(torchrun --nproc-per-node {n} ... --resume), or remove them"
            )
        files = dict.fromkeys([self.out, *self.rank_parts])
        written = [p for p in files if p.is_file() and p.stat().st_size > 0]
        if self.parts_dir.is_dir() and any(self.parts_dir.iterdir()):
            written.append(self.parts_dir)
        if not written:
            return
        if not resume:
            raise StreamError(
                f"{self.label} already holds scored rows ({', '.join(map(str, written[:3]))}); "
                "pass --resume to go on after them, or choose another output path (an output "
                "is never overwritten)"
            )
        if self.parquet:
            self._resume_parquet()
        else:
            self._resume_jsonl()

    def _resume_jsonl(self) -> None:
        if self.world > 1 and not any(p.is_file() for p in self.rank_parts):
            self._check_complete(sinks.jsonl_rows(self.out))  # merged already
            return
        own = (pair for raw in self._own_chunks() for pair in self.source.parse(raw).pairs())
        left = self._verify(sinks.jsonl_rows(self.part), own)
        self.torn_bytes = sinks.drop_torn_tail(self.part)
        for c, n in self.own.items():  # this rank's chunks, in the order it writes them
            self.done[c] = min(left, n)
            left -= self.done[c]

    def _resume_parquet(self) -> None:
        done, size, checked = sinks.parquet_parts(self.parts_dir), self.chunk_size, 0
        if not done:  # merged already (or only a temporary part was left)
            if self.out.is_file():
                self._check_complete(sinks.parquet_rows(self.out))
            return
        for start, (stop, path) in sorted(done.items()):
            if start % size or stop != min(start + size, self.source.n_rows):
                raise StreamError(
                    f"{self.label}: the part {path.name} does not fit chunks of {size} rows "
                    f"of DATA ({self.source.n_rows} rows): it was written with another "
                    "--chunk-size or for other data; resume with the first run's "
                    "--chunk-size, or choose another output"
                )
        for raw in self._own_chunks():
            if raw.start in done:
                chunk = self.source.parse(raw)
                checked += self._verify(sinks.parquet_rows(done[raw.start][1]), chunk.pairs())
                self.done[raw.index] = len(chunk)
        if not checked:  # this rank has no part; check the fields anyway
            self._check_template(*next(sinks.parquet_rows(done[min(done)][1])))

    def _own_chunks(self) -> Iterator[RawChunk]:
        return (r for r in self.source.raw_chunks(self.chunk_size) if r.index in self.own)

    def _check_complete(self, written: Iterator[tuple[str, dict[str, Any]]]) -> None:
        """An output already merged must hold every input row, in order."""
        chunks = self.source.raw_chunks(self.chunk_size)
        every = (pair for raw in chunks for pair in self.source.parse(raw).pairs())
        n = self._verify(written, every)
        if n != self.source.n_rows:
            raise StreamError(
                f"{self.label} holds {n} of the {self.source.n_rows} rows of DATA and no "
                "unfinished parts of this number of processes; resume it with the number of "
                "processes that started it, or choose another output path"
            )
        self.finished, self.done = True, dict(self.own)

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
                    f"{self.label} was written for other data: {where} holds row "
                    f"{obj['row']}, past the rows of DATA ({self.source.n_rows}) it should "
                    "hold; choose another output path"
                )
            if (obj["row"], obj["id"]) != want:
                raise StreamError(
                    f"{self.label} was written for other data: {where} holds row {obj['row']} "
                    f"with id {obj['id']!r}, but DATA row {want[0]} has id {want[1]!r}; use "
                    "the data it was written for, or choose another output path"
                )
            n += 1
        return n

    def _check_template(self, where: str, obj: dict[str, Any]) -> None:
        have, want = list(obj), ["id", "row", *self.fields, *self.constants]
        if have != want:
            raise StreamError(
                f"{self.label} was written with other options: {where} has fields "
                f"{', '.join(have)}, but this run writes {', '.join(want)}; resume with the "
                "options of the first run (--samples, --objective), or choose another output"
            )
        for key, value in self.constants.items():
            if obj[key] != value:
                raise StreamError(
                    f"{self.label} was written with other options: {where} has {key} "
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
        skipped, total = sum(self.done.values()), sum(self.own.values())
        tally = dict.fromkeys(("rows_written", "rows_scored", "rows_nonfinite"), 0)
        tally |= {"rows_skipped": skipped, "torn_bytes": self.torn_bytes}
        counts: dict[str, int] = {}
        on = progress if self.rank == 0 else False
        bar = progress_bar(total=total, initial=skipped, enabled=on, desc="scoring", unit="row")
        chunks = () if self.finished else self._own_chunks()
        try:
            for raw in chunks:
                keep = self.done.get(raw.index, 0)  # rows of this chunk already written
                if keep == len(raw):
                    continue
                chunk = self.source.parse(raw)
                scored = score(chunk)
                self._check_scored(chunk, scored)
                for key, value in scored.counts.items():
                    counts[key] = counts.get(key, 0) + int(value)
                tally["rows_scored"] += len(chunk)
                tally["rows_nonfinite"] += self._write(chunk, scored, keep)
                tally["rows_written"] += len(chunk) - keep
                bar.update(len(chunk) - keep)
        finally:
            bar.close()
        _barrier(self.world)
        if self.rank == 0 and not self.finished:
            if self.parquet:
                sinks.merge_parquet(self.parts_dir, self.out, self.source.n_rows, self.label)
            elif self.world > 1:
                sinks.merge_jsonl(self.rank_parts, self.out, self.source.n_rows, self.label)
        return StreamResult(
            n_rows=self.source.n_rows,
            **_sum_over_ranks(tally, self.world),
            counts=_sum_over_ranks(counts, self.world),
            seconds=time.perf_counter() - began,
            output=self.out,
        )

    def _check_scored(self, chunk: Chunk, scored: ScoredChunk) -> None:
        shapes = {name: np.shape(values) for name, values in scored.columns.items()}
        if list(shapes) != list(self.fields) or any(s[0] != len(chunk) for s in shapes.values()):
            raise RuntimeError(
                f"the scorer returned the shapes {shapes} for a chunk of {len(chunk)} rows; "
                f"expected the fields {list(self.fields)}"
            )
        for name, shape in shapes.items():
            old = (self.template or {}).get(name)
            if isinstance(old, list) and len(shape) == 2 and shape[1] != len(old):
                raise StreamError(
                    f"{self.label} was written with {len(old)} {name} per row, but this model "
                    f"gives {shape[1]}; resume with the same model, or choose another output path"
                )

    def _write(self, chunk: Chunk, scored: ScoredChunk, keep: int) -> int:
        """Write the rows of ``chunk`` after its first ``keep``; those with a non-finite value."""
        ids, start = chunk.ids[keep:], chunk.start + keep
        columns = {k: np.asarray(v, dtype=np.float32)[keep:] for k, v in scored.columns.items()}
        if self.parquet:
            sinks.write_parquet_part(self.parts_dir, ids, start, columns, self.constants)
        else:
            sinks.append_jsonl(self.part, ids, start, columns, self.constants)
        bad = np.zeros(len(ids), dtype=bool)
        for values in columns.values():
            bad |= ~np.isfinite(values).reshape(len(ids), -1).all(axis=1)
        return int(bad.sum())


# -- many processes ------------------------------------------------------------------------


def _barrier(world: int) -> None:
    if world > 1:  # the process group is joined (auq.scoring.distributed.init_distributed)
        import torch.distributed as dist

        dist.barrier()


def _sum_over_ranks(counts: dict[str, int], world: int) -> dict[str, int]:
    """Each count summed over every rank (a rank without a key counts 0), keys sorted."""
    every: list[Any] = [counts]
    if world > 1:
        import torch.distributed as dist

        every = [None] * world
        dist.all_gather_object(every, counts)
    return {key: sum(c.get(key, 0) for c in every) for key in sorted(set().union(*every))}
