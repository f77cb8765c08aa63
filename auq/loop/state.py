"""Training state as safetensors + JSON: no pickle anywhere.

An optimiser's, a scheduler's or a random generator's state is a tree of dicts,
lists, tuples, numbers, strings and tensors. :func:`split_tensors` takes the
tensors out into a flat ``{key: tensor}`` dict (one safetensors file) and leaves a
JSON tree with ``{"__tensor__": key}`` where they were; :func:`join_tensors` puts
them back. Tuples are tagged so that what comes back equals what went in (the
Python and NumPy generator states are tuples).

:func:`capture_rng` / :func:`restore_rng` cover the Python, NumPy, torch CPU and
CUDA generators of one process.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["capture_rng", "join_tensors", "restore_rng", "split_tensors"]

_TENSOR, _TUPLE, _NDARRAY, _INTKEYS = "__tensor__", "__tuple__", "__ndarray__", "__intkeys__"


def split_tensors(tree: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """``(json_tree, tensors)``: the tensors of ``tree`` out, placeholders in.

    Parameters
    ----------
    tree : nested dicts / lists / tuples of tensors, NumPy arrays, numbers, str, None
    prefix : str
        Key prefix of the tensors.

    Returns
    -------
    json_tree : JSON-serialisable
    tensors : dict of str to Tensor
        Contiguous CPU copies (safetensors keeps no views or shared storage).
    """
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            tensors[path] = node.detach().to("cpu", copy=True).contiguous()
            return {_TENSOR: path}
        if isinstance(node, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(node).copy())
            return {_NDARRAY: path}
        if isinstance(node, dict):
            if node and all(isinstance(k, int) for k in node):  # optimizer state: {param id: ...}
                return {_INTKEYS: {str(k): walk(v, f"{path}.{k}") for k, v in node.items()}}
            bad = [k for k in node if not isinstance(k, str)]
            if bad:
                raise TypeError(f"state key {bad[0]!r} at {path or 'the root'} is not a str")
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            return node.item()
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(
            f"state value of type {type(node).__name__} at {path or 'the root'} cannot be "
            "stored as safetensors + JSON"
        )

    return walk(tree, prefix), tensors


def join_tensors(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`split_tensors`."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        if _NDARRAY in tree:
            return tensors[tree[_NDARRAY]].numpy()
        if _TUPLE in tree:
            return tuple(join_tensors(v, tensors) for v in tree[_TUPLE])
        if _INTKEYS in tree:
            return {int(k): join_tensors(v, tensors) for k, v in tree[_INTKEYS].items()}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def capture_rng() -> dict[str, Any]:
    """This process's random states: Python, NumPy, torch CPU and every CUDA device."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the generators from :func:`capture_rng`'s dict (after a JSON round trip too)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(tuple(state["numpy"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
