"""One entry point from whatever a user holds to a :class:`PreferenceDataset`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from auq.data.dataset import PreferenceDataset
from auq.data.validation import ON_ERROR, PreferenceDataError
from auq.utils.validation import check_choice

__all__ = ["ACCEPTED_TYPES", "as_preference_dataset"]

ACCEPTED_TYPES = (
    "an auq.PreferenceDataset, a datasets.Dataset, a pandas.DataFrame, "
    "a list of row dicts or a dict of columns"
)


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
