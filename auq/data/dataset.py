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

:func:`as_preference_dataset` turns any accepted input (a dataset, a
``datasets.Dataset``, a ``pandas.DataFrame``, a list of row dicts or a dict of
columns) into a :class:`PreferenceDataset`.
"""

from __future__ import annotations

import codecs
import json
import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auq.data.chat import render_conversation, render_pair_texts, render_prompt
from auq.data.validation import (
    NUMERIC_COLUMNS,
    ON_ERROR,
    PreferenceDataError,
    RowError,
    require_columns,
    validate_rows,
)
from auq.utils.validation import check_choice

__all__ = [
    "PreferenceDataError",
    "PreferenceDataset",
    "as_preference_dataset",
    "render_conversation",
    "render_pair_texts",
    "symmetrize",
]

ACCEPTED_TYPES = (
    "an auq.PreferenceDataset, a datasets.Dataset, a pandas.DataFrame, "
    "a list of row dicts or a dict of columns"
)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _read_jsonl(path: Path) -> tuple[list[Any], list[str]]:
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
        rows, where = _read_jsonl(Path(path))
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


# -- coercion ---------------------------------------------------------------------------


def _hf_classes(names: tuple[str, ...]) -> tuple[type, ...]:
    """Classes of ``datasets`` (only when the caller has imported it: no import cost here)."""
    module = sys.modules.get("datasets")
    return tuple(getattr(module, n) for n in names if hasattr(module, n)) if module else ()


def as_preference_dataset(
    value: Any, *, name: str = "dataset", on_error: str = "raise"
) -> PreferenceDataset:
    """Turn any accepted input into a :class:`PreferenceDataset`.

    Parameters
    ----------
    value : PreferenceDataset, datasets.Dataset, pandas.DataFrame, list of dict or dict
        A dataset (returned as is), a Hugging Face ``Dataset`` / ``IterableDataset``
        (:meth:`PreferenceDataset.from_hf`), a ``pandas.DataFrame``
        (:meth:`~PreferenceDataset.from_pandas`), a list (or tuple) of row dicts
        (:meth:`~PreferenceDataset.from_records`) or a dict of columns
        (:meth:`~PreferenceDataset.from_dict`).
    name : str
        What the value is called by the caller (``"eval_dataset"``), for messages.
    on_error : {"raise", "skip"}
        Passed to the loader; a :class:`PreferenceDataset` is returned unchanged.

    Returns
    -------
    PreferenceDataset

    Raises
    ------
    TypeError
        For any other type, or a ``DatasetDict`` (the message lists its splits).
    PreferenceDataError
        For invalid rows; the message starts with ``name``.
    """
    check_choice("on_error", on_error, ON_ERROR)
    if isinstance(value, PreferenceDataset):
        return value
    splits = _hf_classes(("DatasetDict", "IterableDatasetDict"))
    if splits and isinstance(value, splits):
        raise TypeError(
            f"{name}: got a {type(value).__name__} with splits {list(value)}; pass one split, "
            f"e.g. {name}=data[{next(iter(value), 'train')!r}]"
        )
    pandas = sys.modules.get("pandas")
    if isinstance(value, _hf_classes(("Dataset", "IterableDataset"))):
        loader = PreferenceDataset.from_hf
    elif pandas is not None and isinstance(value, pandas.DataFrame):
        loader = PreferenceDataset.from_pandas
    elif isinstance(value, list | tuple) and (not value or isinstance(value[0], Mapping)):
        loader = PreferenceDataset.from_records
    elif isinstance(value, Mapping):
        loader = PreferenceDataset.from_dict
    else:
        kind = type(value)
        got = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        if isinstance(value, list | tuple):
            got = f"a {got} of {type(value[0]).__name__}"
        raise TypeError(f"{name}: expected {ACCEPTED_TYPES}; got {got}")
    try:
        return loader(value, on_error=on_error)
    except PreferenceDataError as err:
        raise PreferenceDataError(f"{name}: {err}") from None


# -- symmetrisation and chat rendering ---------------------------------------------------


def symmetrize(margins: Any, labels: Any = None) -> tuple[Any, Any]:
    """Swap-symmetrise pairwise data for calibration.

    Each pair (Δ, y) is also presented swapped, (−Δ, 1 − y). For an antisymmetric
    model, P(b ≻ a) = 1 − P(a ≻ b), the swapped pair carries the same information:
    a temperature fit σ(Δ / T) (no intercept) gets exactly twice the likelihood and
    the same T. But a calibration set built the usual way has every label equal to 1
    ("chosen wins"): Platt scaling's intercept then absorbs "always 1" and diverges,
    and isotonic regression or scikit-learn's ``LogisticRegression`` see one class
    only. The symmetrised set is balanced, has both classes, and so still calibrates.

    Parameters
    ----------
    margins : np.ndarray or torch.Tensor, shape (B,)
        Margins (logits) Δ = r(chosen) − r(rejected).
    labels : array-like, shape (B,), optional
        1 where the first response won, 0 where it lost; default all ones.

    Returns
    -------
    margins, labels : shape (2B,)
        ``concat([Δ, −Δ])`` and ``concat([y, 1 − y])``, in the type of ``margins``.
    """
    import torch

    is_torch = isinstance(margins, torch.Tensor)
    m = margins if is_torch else np.asarray(margins, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"margins must have shape (B,), got {tuple(m.shape)}")
    if labels is None:
        y = torch.ones_like(m) if is_torch else np.ones_like(m)
    else:
        y = torch.as_tensor(labels, device=m.device) if is_torch else np.asarray(labels)
    if tuple(y.shape) != tuple(m.shape):
        raise ValueError(f"labels must have shape {tuple(m.shape)}, got {tuple(y.shape)}")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    flipped = ~y if y.dtype in (torch.bool, np.bool_) else 1 - y
    cat = torch.cat if is_torch else np.concatenate
    return cat([m, -m]), cat([y, flipped])
