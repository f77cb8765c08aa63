"""Best-of-n curves from one pool of samples, in closed form.

Draw N responses per prompt once, score them, and every best-of-n curve for
n ≤ N follows without re-sampling:

* :func:`expected_best_of_n` — the expected target (e.g. gold reward) of the
  response picked by an objective among n draws. It averages over every n-subset
  of the pool (draws without replacement), which makes it the unbiased
  U-statistic estimate of best-of-n from the policy: sorted by objective
  ascending, the item of rank i (1-based) is the maximum of a random n-subset
  with probability C(i−1, n−1) / C(N, n).
* :func:`best_of_n_kl_bound` — log n − (n−1)/n, the KL of best-of-n from the
  reference for continuous rewards and an upper bound in general
  (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy").
* :func:`best_of_n_kl` — the plug-in KL: best-of-n run on the pool's empirical
  distribution (n draws with replacement) against that distribution.

Ties in the objective are handled exactly: the pick among tied maxima is uniform,
so a tied group contributes its mean target. Probabilities are computed in log
space by a ratio recurrence in float64: N up to ~10⁵ and any 1 ≤ n ≤ N work without overflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "expected_best_of_n",
    "max_rank_probabilities",
]


def _as_pool(name: str, values: Any) -> np.ndarray:
    """(P, N) finite float64 from (N,) or (P, N)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N,) or (P, N) with N >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} must be finite; it holds {bad} NaN/inf values")
    return array


def _as_ns(ns: Any, pool_size: int) -> np.ndarray:
    """ns as an int array (K,), each 1 ≤ n ≤ N."""
    if isinstance(ns, int | np.integer) and not isinstance(ns, bool):
        ns = [ns]
    values = list(ns) if isinstance(ns, Sequence | np.ndarray) else None
    if not values:
        raise ValueError(f"ns must be an int or a non-empty sequence of ints, got {ns!r}")
    bad = [
        v
        for v in values
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 1 <= v <= pool_size
    ]
    if bad:
        raise ValueError(
            f"ns must hold integers with 1 <= n <= N={pool_size} (the pool size), got {bad!r}"
        )
    return np.asarray(values, dtype=np.int64)


def max_rank_probabilities(pool_size: int, n: int) -> np.ndarray:
    """P(rank i is the maximum of a random n-subset of 1..N), i = 1..N, shape (N,).

    Equals C(i−1, n−1) / C(N, n): zero below rank n, summing to one. Computed in log
    space from the top rank down with the ratio p(i) / p(i+1) = 1 − (n−1)/i, then
    normalised (no factorials, so no overflow; relative error ~1e-13 at N = 10⁴).
    """
    out = np.zeros(pool_size)
    ranks = np.arange(n, pool_size, dtype=np.float64)  # i = n .. N−1
    log_ratio = np.log1p(-(n - 1) / ranks)  # log p(i) − log p(i+1)
    log_p = np.append(np.cumsum(log_ratio[::-1])[::-1], 0.0)  # log p(i) − log p(N), i = n..N
    out[n - 1 :] = np.exp(log_p)
    return out / out.sum()


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable ascending order (N,), group start positions (G,), group sizes (G,)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    return order, starts, sizes


def expected_best_of_n(
    objective_values: Any,
    target_values: Any,
    ns: int | Sequence[int],
    *,
    per_prompt: bool = False,
) -> np.ndarray:
    """Expected target of the best-of-n pick, for every n at once, from one pool.

    For each prompt, the pick is the argmax of ``objective_values`` among n of the
    N pooled responses drawn without replacement (ties broken uniformly); the
    expectation over all C(N, n) subsets is exact.

    Parameters
    ----------
    objective_values : array-like, shape (P, N) or (N,)
        What selects (e.g. a penalised reward from the reward model).
    target_values : array-like, same shape
        What is measured on the pick (e.g. the gold reward).
    ns : int or sequence of K ints
        Each 1 ≤ n ≤ N.
    per_prompt : bool
        Return the (P, K) per-prompt values instead of their mean over prompts.

    Returns
    -------
    np.ndarray, shape (K,) — or (P, K) with ``per_prompt=True``
        n = 1 gives the pool mean; n = N the target of the argmax (ties averaged).
    """
    objective = _as_pool("objective_values", objective_values)
    target = _as_pool("target_values", target_values)
    if objective.shape != target.shape:
        raise ValueError(
            f"objective_values and target_values must have the same shape, got "
            f"{objective.shape} and {target.shape}"
        )
    pool_size = objective.shape[1]
    ns = _as_ns(ns, pool_size)
    tied_target = np.empty_like(target)  # (P, N): targets sorted by objective, ties averaged
    for row in range(objective.shape[0]):
        order, starts, sizes = _tie_groups(objective[row])
        group_mean = np.add.reduceat(target[row, order], starts) / sizes
        tied_target[row] = np.repeat(group_mean, sizes)
    out = np.stack([tied_target @ max_rank_probabilities(pool_size, int(n)) for n in ns], axis=1)
    return out if per_prompt else out.mean(axis=0)


def best_of_n_kl_bound(n: int | Sequence[int] | np.ndarray) -> float | np.ndarray:
    """log n − (n−1)/n: the KL of best-of-n from the reference (an upper bound in general).

    Parameters
    ----------
    n : int or array-like of ints ≥ 1

    Returns
    -------
    float, or np.ndarray of n's shape
    """
    array = np.asarray(n)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer) or (array < 1).any():
        raise ValueError(f"n must be an integer >= 1 (or an array of them), got {n!r}")
    values = np.log(array.astype(np.float64)) - (array - 1.0) / array
    return float(values) if values.ndim == 0 else values


def _kl_one(objective: np.ndarray, labels: np.ndarray | None, n: int) -> float:
    """Plug-in best-of-n KL of one pool (N,); ``labels`` (N,) merge identical responses."""
    if n == 1:
        return 0.0  # best-of-1 is the reference itself
    pool_size = len(objective)
    order, starts, sizes = _tie_groups(objective)
    upto = (starts + sizes).astype(np.float64)  # items with objective ≤ the group's value
    below = starts.astype(np.float64)
    # P(max of n i.i.d. draws lies in the group) = (upto/N)^n − (below/N)^n, stably
    with np.errstate(divide="ignore"):
        log_top = n * np.log(upto / pool_size)
        ratio = n * np.log(below / upto)  # −inf for the lowest group
    group_p = np.exp(log_top) * -np.expm1(ratio)
    if labels is None:  # a tied group is one atom: within it p/q is constant
        mass, prior = group_p, sizes / pool_size
    else:
        item_p = np.empty(pool_size)
        item_p[order] = np.repeat(group_p / sizes, sizes)
        mass = np.bincount(labels, weights=item_p)
        prior = np.bincount(labels) / pool_size
    keep = mass > 0
    return float(np.sum(mass[keep] * (np.log(mass[keep]) - np.log(prior[keep]))))


def _response_labels(responses: Any, shape: tuple[int, int]) -> np.ndarray:
    """Integer labels (P, N), equal for identical responses within a prompt's pool."""
    rows = [list(r) for r in responses] if not isinstance(responses, str) else None
    if rows is None or len(rows) != shape[0] or any(len(r) != shape[1] for r in rows):
        raise ValueError(
            f"responses must be P={shape[0]} lists of N={shape[1]} responses, matching "
            "objective_values"
        )
    labels = np.empty(shape, dtype=np.int64)
    for p, row in enumerate(rows):
        seen: dict[Any, int] = {}
        for i, item in enumerate(row):
            key = item if isinstance(item, str) else repr(item)
            labels[p, i] = seen.setdefault(key, len(seen))
    return labels


def best_of_n_kl(
    objective_values: Any,
    ns: int | Sequence[int],
    responses: Any = None,
    *,
    per_prompt: bool = False,
) -> np.ndarray:
    """Plug-in KL(best-of-n ‖ reference) from one pool of N scored responses per prompt.

    The reference is the pool's empirical distribution; best-of-n draws n responses
    from it with replacement and keeps the argmax of the objective (uniform among
    ties). Identical responses are one outcome (pass ``responses``), tied objective
    values share their mass, and both make the KL smaller. With N ≫ n distinct
    values it approaches :func:`best_of_n_kl_bound`, and it never exceeds it.

    Parameters
    ----------
    objective_values : array-like, shape (P, N) or (N,)
    ns : int or sequence of K ints
        Each 1 ≤ n ≤ N.
    responses : P lists of N texts, optional
        The pooled responses (same layout); identical ones are merged.
    per_prompt : bool
        Return (P, K) instead of the mean over prompts.

    Returns
    -------
    np.ndarray, shape (K,) — or (P, K) with ``per_prompt=True``
        In nats.
    """
    objective = _as_pool("objective_values", objective_values)
    ns = _as_ns(ns, objective.shape[1])
    if responses is not None and len(responses) and isinstance(responses[0], str):
        responses = [responses]  # one pool (N,)
    labels = None if responses is None else _response_labels(responses, objective.shape)
    out = np.array(
        [
            [_kl_one(objective[p], None if labels is None else labels[p], int(n)) for n in ns]
            for p in range(objective.shape[0])
        ]
    )
    return out if per_prompt else out.mean(axis=0)
