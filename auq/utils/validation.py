"""Small helpers that turn bad options into messages naming the option and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice", "check_positive_int", "check_probability"]


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    choices = list(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not supported; valid choices: {listed}")
    return value


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ≥ ``minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_probability(name: str, value: Any, *, inclusive: bool = True) -> float:
    """Return ``value`` if it lies in [0, 1] (or (0, 1) when not inclusive)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and (0 <= value <= 1 if inclusive else 0 < value < 1)
    if not ok:
        bounds = "[0, 1]" if inclusive else "(0, 1)"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
    return float(value)
