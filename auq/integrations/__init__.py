"""Bridges from auq's reward models to RL trainers of other libraries.

==================================  ================================================
:mod:`auq.integrations.trl`         ``reward_function(rm, objective=...)``: a TRL
                                    ``reward_funcs`` callable for ``GRPOTrainer``,
                                    ``RLOOTrainer`` and ``OnlineDPOTrainer``
:mod:`auq.integrations.verl`        helpers for verl
==================================  ================================================

The submodules load on first access (``auq.integrations.trl``), so importing this
package pulls in neither TRL nor verl; none of them needs its library to be
imported until a trainer calls it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["trl", "verl"]

_SUBMODULES = frozenset(__all__)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
