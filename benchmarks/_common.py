"""Shared bits of the benchmark scripts."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model and core count, for results files."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model} CPU, {os.cpu_count()} cores"


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device | str) -> float:
    """Wall-clock seconds of one call of ``fn``, synchronising the GPU around it."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_time(fn, device: torch.device | str, repeats: int) -> float:
    return statistics.median(timed(fn, device) for _ in range(repeats))
