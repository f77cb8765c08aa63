"""The ``auq`` command line: one module per command, dispatched by :mod:`auq.cli.main`.

Run it as the ``auq`` script or ``python -m auq.cli`` (e.g. under ``torchrun``).
"""

from auq.cli.main import main

__all__ = ["main"]
