"""The ``auq`` command line: one module per command, dispatched by :mod:`auq.cli.main`."""

from auq.cli.main import main

__all__ = ["main"]
