"""The ``auq`` command line: one module per command, dispatched by :mod:`auq.cli.main`."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``auq`` (see :func:`auq.cli.main.main`); imported on call, so that
    ``python -m auq.cli.main`` does not find its module already imported."""
    from auq.cli.main import main as run

    return run(argv)
