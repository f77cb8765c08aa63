"""Preference pairs: loading, validation, indexing, splitting and chat rendering.

A :class:`PreferenceDataset` holds N pairs in TRL's columns — ``prompt``, ``chosen``,
``rejected`` (each a non-empty ``str``, or, *conversational*, a list of
``{"role": str, "content": str}`` messages with a role in ``system``, ``user``,
``assistant``, ``tool``) and optional ``margin`` / ``weight`` (finite floats,
weight ≥ 0; a string holding a number, as a CSV column gives, is parsed). Any
other column is kept as metadata. Every loader validates every row; a bad row
raises :class:`PreferenceDataError` naming the row index and the field, or, with
``on_error="skip"``, is skipped, recorded in ``skipped`` and counted in a warning.
Nothing is dropped silently.

Without a ``prompt`` column (TRL's *implicit prompt* layout), every loader takes
each row's prompt from the shared start of ``chosen`` and ``rejected`` — the
common character prefix of two strings, or the common leading messages of two
conversations — as ``trl.maybe_extract_prompt`` does; see
:func:`auq.data.validation.extract_prompt`.

:func:`auq.data.as_preference_dataset` turns any accepted input (a dataset, a
``datasets.Dataset``, a ``pandas.DataFrame``, a list of row dicts or a dict of
columns) into a :class:`PreferenceDataset`.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auq.data.chat import render_pair_texts, render_prompt
from auq.data.jsonl import read_jsonl_rows
from auq.data.validation import (
    NUMERIC_COLUMNS,
    ON_ERROR,
    PreferenceDataError,
    require_columns,
    validate_rows,
)
from auq.utils.validation import check_choice

__all__ = ["PreferenceDataError", "PreferenceDataset"]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class PreferenceDataset:
    """N validated preference pairs in TRL's columns.

    Parameters
    ----------
    columns : mapping of str to sequence
        Column name → N values; needs ``prompt``, ``chosen`` and ``rejected``;
        ``margin`` / ``weight`` are optional numeric columns; others are metadata.
    on_error : {"raise", "skip"}
        ``"raise"`` stops at the first bad row; ``"skip"`` drops bad rows, records
        them in :attr:`skipped` and warns with their count.

    Notes
    -----
    Datasets derived by indexing, :meth:`select`, :meth:`split`, :meth:`shuffle` or
    :meth:`concat` contain only valid rows, so their :attr:`skipped` is empty.
    """

    def __init__(self, columns: Mapping[str, Sequence[Any]], *, on_error: str = "raise") -> None:
        for c, values in columns.items():
            if isinstance(values, str | bytes | Mapping) or not hasattr(values, "__len__"):
                raise PreferenceDataError(
                    f"column {c!r} must be a sequence of N values, got {type(values).__name__}; "
                    "a dict is read as columns (name -> list of values): for one row pass "
                    "a list of row dicts, [row]"
                )
        names = [str(c) for c in columns]
        require_columns(names)
        cols = {c: list(values) for c, values in columns.items()}  # positional, even for Series
        n = len(next(iter(cols.values())))
        for c, values in cols.items():
            if len(values) != n:
                first = next(iter(cols))
                raise PreferenceDataError(
                    f"column {c!r} has {len(values)} values but {first!r} has {n}"
                )
        rows = [{c: cols[c][i] for c in cols} for i in range(n)]
        self._set(**validate_rows(rows, on_error))

    def _set(self, cols: dict[str, Any], conversational: bool, skipped: list) -> None:
        self._cols, self._conversational, self._skipped = cols, conversational, skipped

    def _derived(self, cols: dict[str, Any], conversational: bool) -> PreferenceDataset:
        obj = type(self).__new__(type(self))
        obj._set(cols, conversational, [])
        return obj

    @classmethod
    def _from_rows(
        cls, rows: list[Any], on_error: str, where: Sequence[str] | None = None
    ) -> PreferenceDataset:
        obj = cls.__new__(cls)
        obj._set(**validate_rows(rows, on_error, where=where))
        return obj

    # -- loaders -------------------------------------------------------------------------

    @classmethod
    def from_records(
        cls, rows: Iterable[Mapping[str, Any]], *, on_error: str = "raise"
    ) -> PreferenceDataset:
        """Build from an iterable of row mappings (``{"prompt": ..., "chosen": ..., ...}``)."""
        return cls._from_rows(list(rows), on_error)

    @classmethod
    def from_dict(
        cls, columns: Mapping[str, Sequence[Any]], *, on_error: str = "raise"
    ) -> PreferenceDataset:
        """Build from columns: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``."""
        return cls(columns, on_error=on_error)

    @classmethod
    def from_jsonl(cls, path: str | Path, *, on_error: str = "raise") -> PreferenceDataset:
        """Read one JSON object per line (UTF-8, no byte-order mark); blank lines are ignored.

        Rows are numbered from 0 over the non-blank lines, and every row error also
        names the file and the 1-based line (``row 2 (prefs.jsonl, line 4): invalid
        JSON ...``). A missing file raises ``FileNotFoundError`` naming the path; a
        file that is not UTF-8 raises :class:`PreferenceDataError` naming the line and
        the byte offset, whatever ``on_error`` says (a wrongly encoded file is not a
        bad row).
        """
        check_choice("on_error", on_error, ON_ERROR)
        rows, where = read_jsonl_rows(Path(path))
        return cls._from_rows(rows, on_error, where)

    @classmethod
    def from_pandas(cls, df: Any, *, on_error: str = "raise") -> PreferenceDataset:
        """Build from a ``pandas.DataFrame`` (pandas is only needed by the caller).

        NaN / ``pd.NA`` in a text column is a missing value; in ``margin`` / ``weight``
        it is an invalid value of that row.
        """
        if not (hasattr(df, "columns") and hasattr(df, "to_dict")):
            raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
        require_columns([str(c) for c in df.columns])
        return cls._from_rows(df.to_dict(orient="records"), on_error)

    @classmethod
    def from_hf(cls, dataset: Any, *, on_error: str = "raise") -> PreferenceDataset:
        """Build from a Hugging Face ``datasets.Dataset`` (duck-typed: ``column_names``).

        An ``IterableDataset`` is read to its end; a ``DatasetDict`` is refused (pick a split).
        """
        names = getattr(dataset, "column_names", None)
        if isinstance(names, Mapping):
            raise TypeError(
                f"got a DatasetDict with splits {list(names)}; pass one, e.g. dataset['train']"
            )
        if names is None:
            raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
        require_columns(list(names))
        rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
        return cls._from_rows(rows, on_error)

    # -- properties ----------------------------------------------------------------------

    @property
    def prompts(self) -> list[Any]:
        """Prompts, length N (str, or message lists when conversational)."""
        return list(self._cols["prompt"])

    @property
    def chosen(self) -> list[Any]:
        """Preferred responses, length N."""
        return list(self._cols["chosen"])

    @property
    def rejected(self) -> list[Any]:
        """Dispreferred responses, length N."""
        return list(self._cols["rejected"])

    def _numeric(self, name: str) -> np.ndarray | None:
        v = self._cols.get(name)
        if v is None:
            return None
        v = v.view()
        v.flags.writeable = False  # a read-only view: edits must go through a new dataset
        return v

    @property
    def margin(self) -> np.ndarray | None:
        """Preference margins, float64 shape (N,), or None when the column is absent."""
        return self._numeric("margin")

    @property
    def weight(self) -> np.ndarray | None:
        """Per-pair weights ≥ 0, float64 shape (N,), or None when absent."""
        return self._numeric("weight")

    @property
    def columns(self) -> list[str]:
        """Column names: required, then numeric, then metadata columns."""
        return list(self._cols)

    def column(self, name: str) -> list[Any] | np.ndarray:
        """Values of column ``name``, length N (an array for ``margin`` / ``weight``)."""
        if name not in self._cols:
            raise KeyError(f"no column {name!r}; columns: {self.columns}")
        v = self._cols[name]
        return self._numeric(name) if isinstance(v, np.ndarray) else list(v)

    @property
    def is_conversational(self) -> bool:
        """True when texts are message lists rather than strings."""
        return self._conversational

    @property
    def skipped(self) -> list[tuple[int, str | None, str]]:
        """``(row_index, field, reason)`` of each row skipped while loading."""
        return list(self._skipped)

    @property
    def n_skipped(self) -> int:
        """Number of rows skipped while loading."""
        return len(self._skipped)

    # -- indexing ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._cols["prompt"])

    def _row(self, i: int) -> dict[str, Any]:
        return {c: (float(v[i]) if c in NUMERIC_COLUMNS else v[i]) for c, v in self._cols.items()}

    def _take(self, idx: np.ndarray) -> PreferenceDataset:
        cols = {
            c: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx])
            for c, v in self._cols.items()
        }
        return self._derived(cols, self._conversational)

    def __getitem__(self, key: Any) -> dict[str, Any] | PreferenceDataset:
        """``ds[i]`` → row dict; ``ds[slice | list | array]`` → new dataset."""
        n = len(self)
        if isinstance(key, numbers.Integral) and not isinstance(key, bool | np.bool_):
            if not -n <= key < n:
                raise IndexError(f"row {key} out of range for a dataset of {n} rows")
            return self._row(int(key) % n)
        if isinstance(key, slice):
            return self._take(np.arange(n)[key])
        return self.select(key)

    def select(self, indices: Sequence[int] | np.ndarray) -> PreferenceDataset:
        """New dataset of the rows at ``indices`` (ints, or a boolean mask of length N)."""
        n = len(self)
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask must have shape ({n},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be a 1-D sequence of ints, got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} rows")
        return self._take(idx % n if idx.size else idx)

    def shuffle(self, seed: int = 0) -> PreferenceDataset:
        """Rows in a random order drawn from ``numpy.random.default_rng(seed)``."""
        return self._take(np.random.default_rng(seed).permutation(len(self)))

    def split(
        self, test_size: float | int = 0.2, *, seed: int = 0
    ) -> tuple[PreferenceDataset, PreferenceDataset]:
        """Shuffle deterministically and split into ``(train, test)``.

        Sizes follow scikit-learn's ``train_test_split``: a float ``test_size`` in
        (0, 1) gives ``ceil(test_size * N)`` test rows, an int gives exactly that many.
        """
        n = len(self)
        if isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool):
            n_test = int(test_size)
        elif isinstance(test_size, numbers.Real) and 0 < test_size < 1:
            n_test = math.ceil(float(test_size) * n)
        else:
            raise ValueError(f"test_size must be a float in (0, 1) or an int, got {test_size!r}")
        if not 1 <= n_test < n:
            raise ValueError(
                f"test_size={test_size!r} with {n} rows gives {n_test} test and "
                f"{n - n_test} train rows; both need at least one"
            )
        perm = np.random.default_rng(seed).permutation(n)
        return self._take(perm[n_test:]), self._take(perm[:n_test])

    def concat(self, other: PreferenceDataset) -> PreferenceDataset:
        """Rows of ``self`` followed by rows of ``other``.

        Metadata columns present in only one side are filled with None; ``margin`` and
        ``weight`` must be present in both or in neither.
        """
        if self._conversational != other._conversational:
            raise PreferenceDataError("cannot concat a conversational and a plain dataset")
        for c in NUMERIC_COLUMNS:
            if (c in self._cols) != (c in other._cols):
                raise PreferenceDataError(f"cannot concat: column {c!r} is in only one dataset")
        cols: dict[str, Any] = {}
        for c in [*self._cols, *(c for c in other._cols if c not in self._cols)]:
            a, b = self._cols.get(c, [None] * len(self)), other._cols.get(c, [None] * len(other))
            cols[c] = np.concatenate([a, b]) if c in NUMERIC_COLUMNS else [*a, *b]
        return self._derived(cols, self._conversational)

    # -- export --------------------------------------------------------------------------

    def to_records(self) -> list[dict[str, Any]]:
        """All rows as dicts (numeric columns as Python floats)."""
        return [self._row(i) for i in range(len(self))]

    def to_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per row (UTF-8); :meth:`from_jsonl` reads it back."""
        with open(path, "w", encoding="utf-8") as fh:
            for row in self.to_records():
                fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of :meth:`to_records` (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.to_records(), columns=self.columns)

    def render(self, tokenizer: Any = None) -> PreferenceDataset:
        """Plain-text copy: conversational rows rendered with :func:`render_pair_texts`.

        ``prompt`` becomes the rendered prompt (with the generation prompt) and
        ``chosen`` / ``rejected`` the rendered responses; plain datasets return ``self``.
        """
        if not self._conversational:
            return self
        cols = dict(self._cols)
        for c in ("chosen", "rejected"):
            pairs = zip(self._cols["prompt"], self._cols[c], strict=True)
            cols[c] = [render_pair_texts(p, r, tokenizer)[1] for p, r in pairs]
        cols["prompt"] = [render_prompt(p, tokenizer) for p in self._cols["prompt"]]
        return self._derived(cols, False)

    def __repr__(self) -> str:
        kind = "conversational" if self._conversational else "plain"
        skipped = f", skipped={self.n_skipped}" if self._skipped else ""
        cols = self.columns
        return f"PreferenceDataset(n_rows={len(self)}, format={kind!r}, columns={cols}{skipped})"
