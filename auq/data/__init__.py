"""Preference data: the dataset, its row validation, chat rendering and the built-in set."""

from auq.data.builtin import load_builtin_preferences
from auq.data.chat import render_conversation, render_pair_texts
from auq.data.coerce import as_preference_dataset
from auq.data.dataset import PreferenceDataset
from auq.data.symmetry import symmetrize
from auq.data.validation import VALID_ROLES, PreferenceDataError

__all__ = [
    "VALID_ROLES",
    "PreferenceDataError",
    "PreferenceDataset",
    "as_preference_dataset",
    "load_builtin_preferences",
    "render_conversation",
    "render_pair_texts",
    "symmetrize",
]
