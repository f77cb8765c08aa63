"""The installed package's version, read from its metadata (never from ``auq/__init__``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["package_version"]


def package_version() -> str:
    """``auq``'s installed version (``"0+unknown"`` in a source tree that is not installed)."""
    try:
        return version("auq")
    except PackageNotFoundError:  # pragma: no cover - only outside an installation
        return "0+unknown"
