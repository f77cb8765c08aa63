"""A scope that runs torch's CPU ops on a set number of threads, then restores the count.

Small models gain nothing from intra-op threads and, on a busy machine, the extra
threads mostly spin (the testbed's reference policy on a shared 2-core box: an SFT
step 14x slower and sampling about 10x slower with 2 threads than with 1). One
thread also makes training bit-for-bit independent of the machine's core count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["cpu_threads"]


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run torch's CPU ops on ``n`` threads inside (``None``: leave the setting alone)."""
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be None or an integer >= 1, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
