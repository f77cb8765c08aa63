"""Resumable training checkpoints, written atomically.

One directory per checkpoint, ``<output_dir>/checkpoint-<step>/``::

    weights.safetensors        what trains: trainable parameters and the module's buffers
    optimizer.safetensors      optimiser tensors (AdamW moments) ...
    optimizer.json             ... and the rest of its state (param groups, step counts)
    scheduler.json             learning-rate scheduler
    rng-rank<r>.safetensors    each process's random generators ...
    rng-rank<r>.json           ... (Python, NumPy, torch, CUDA)
    trainer_state.json         update count, data position, world size
    caller.safetensors/.json   the trainer's own resumable state (history, best weights)

Every file is written into ``.checkpoint-<step>.tmp`` first and the directory is
renamed into place when complete, so a run killed while saving leaves the previous
checkpoint as the latest one. Nothing is pickled.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from auq.loop.state import capture_rng, join_tensors, restore_rng, split_tensors
from auq.utils.io import CheckpointError, load_safetensors, read_json, write_json

__all__ = [
    "CHECKPOINT_PREFIX",
    "checkpoint_dirs",
    "latest_checkpoint",
    "load_training_state",
    "module_state",
    "save_training_state",
]

CHECKPOINT_PREFIX = "checkpoint-"
_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found) if (p / "trainer_state.json").is_file()]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (None when there is none)."""
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def module_state(module: nn.Module) -> dict[str, Tensor]:
    """What a checkpoint keeps of ``module``: trainable parameters and all buffers."""
    state = {n: p for n, p in module.named_parameters() if p.requires_grad}
    state.update(dict(module.named_buffers()))
    return state


def _save_split(directory: Path, stem: str, tree: Any) -> None:
    from safetensors.torch import save_file

    json_tree, tensors = split_tensors(tree)
    save_file(tensors, str(directory / f"{stem}.safetensors"))
    write_json(directory / f"{stem}.json", json_tree)


def _load_split(directory: Path, stem: str, what: str) -> Any:
    tree = read_json(directory / f"{stem}.json", what=what)
    return join_tensors(tree, load_safetensors(directory / f"{stem}.safetensors"))


def save_training_state(
    output_dir: str | Path,
    step: int,
    *,
    module: nn.Module,
    optimizer: Any,
    scheduler: Any,
    trainer_state: dict[str, Any],
    caller_state: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Any = None,
    save_total_limit: int | None = None,
) -> Path:
    """Write checkpoint ``step`` (every rank calls this; rank 0 writes the shared files).

    Parameters
    ----------
    output_dir : str or Path
    step : int
        Updates taken so far.
    module : nn.Module
        The unwrapped training module (:func:`module_state` of it is saved).
    optimizer, scheduler
        Objects with ``state_dict()``.
    trainer_state : dict
        JSON-serialisable loop state (data position).
    caller_state : dict, optional
        The trainer's own state: JSON values and tensors.
    rank, world_size : int
    barrier : callable, optional
        Synchronises the processes (``accelerator.wait_for_everyone``).
    save_total_limit : int, optional
        Remove the oldest checkpoints beyond this many.

    Returns
    -------
    Path
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = root / f".{final.name}.tmp"
    sync = barrier or (lambda: None)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    sync()
    _save_split(tmp, f"rng-rank{rank}", capture_rng())
    if rank == 0:
        weights = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in module_state(module).items()
        }
        save_file(weights, str(tmp / "weights.safetensors"))
        _save_split(tmp, "caller", caller_state or {})
        _save_split(tmp, "optimizer", optimizer.state_dict())
        write_json(tmp / "scheduler.json", split_tensors(scheduler.state_dict())[0])
        write_json(
            tmp / "trainer_state.json", {**trainer_state, "step": step, "world_size": world_size}
        )
    sync()
    if rank == 0:
        for path in tmp.iterdir():  # durable before the rename makes the checkpoint visible
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if save_total_limit is not None:
            for old in checkpoint_dirs(root)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    sync()
    return final


def load_training_state(
    checkpoint: str | Path,
    *,
    module: nn.Module,
    optimizer: Any,
    scheduler: Any,
    rank: int = 0,
    world_size: int = 1,
    expect: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore a checkpoint into ``module``, ``optimizer``, ``scheduler`` and the RNGs.

    ``expect`` names trainer-state settings that must match (checked before anything
    is loaded, so a refused resume leaves the model as it was).

    Returns
    -------
    trainer_state : dict
        ``step``, the data position, the settings the run was written with.
    caller_state : dict
        What the trainer saved as its own state.

    Raises
    ------
    CheckpointError
        A missing or damaged file, weights that do not match the module, or a
        different number of processes than the run that wrote it.
    """
    directory = Path(checkpoint)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    state = read_json(
        directory / "trainer_state.json", what="trainer state", required=("step", "world_size")
    )
    for key, value in (expect or {}).items():
        if state.get(key) != value:
            raise CheckpointError(
                f"{directory}: written with {key}={state.get(key)!r}, resumed with "
                f"{key}={value!r}; resume with the same setting"
            )
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"{directory}: written by {state['world_size']} process(es), resumed with "
            f"{world_size}; resume with the same number of processes"
        )
    weights = load_safetensors(directory / "weights.safetensors")
    expected = module_state(module)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not match the model being trained "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise CheckpointError(
                f"{directory}: {name} has shape {tuple(value.shape)} in the checkpoint, "
                f"{tuple(expected[name].shape)} in the model"
            )
        expected[name].data.copy_(value)
    optimizer.load_state_dict(_load_split(directory, "optimizer", "optimizer state"))
    scheduler.load_state_dict(
        join_tensors(read_json(directory / "scheduler.json", what="scheduler state"), {})
    )
    rng_stem = f"rng-rank{rank}"
    if (directory / f"{rng_stem}.json").is_file():
        restore_rng(_load_split(directory, rng_stem, "random state"))
    else:
        raise CheckpointError(f"{directory}: {rng_stem}.json is missing")
    return state, _load_split(directory, "caller", "trainer's own state")
