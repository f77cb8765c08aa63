"""Preference data: the dataset, its row validation, chat rendering and the built-in set."""

from auq.data.builtin import load_builtin_preferences
from auq.data.chat import render_conversation, render_pair_texts
from auq.data.dataset import PreferenceDataset, as_preference_dataset, symmetrize
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
