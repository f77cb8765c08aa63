"""Feature-level uncertainty heads: they map backbone features (N, d) to reward draws."""

from auq.heads.base import HEAD_REGISTRY, PreferenceHead, load_head, register_head, save_head

__all__ = ["HEAD_REGISTRY", "PreferenceHead", "load_head", "register_head", "save_head"]
