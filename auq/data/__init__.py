"""Preference data: the dataset, its row validation, chat rendering and the built-in set."""

from auq.data.builtin import load_builtin_preferences
from auq.data.chat import render_conversation, render_pair_texts
from auq.data.dataset import PreferenceDataset, symmetrize
from auq.data.validation import PreferenceDataError

__all__ = [
    "PreferenceDataError",
    "PreferenceDataset",
    "load_builtin_preferences",
    "render_conversation",
    "render_pair_texts",
    "symmetrize",
]
