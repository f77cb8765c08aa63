"""verl custom reward functions that ask a running ``auq serve`` for rewards.

verl loads a reward function from a file named in its config and calls it once
per response (``compute_score``), or once per batch with its ``batch`` reward
manager (``compute_score_batch``)::

    # start the server: auq serve rm/ --objective lcb --k 1.0
    custom_reward_function.path=$(python -c "import auq.integrations.verl as m; print(m.__file__)")
    custom_reward_function.name=compute_score              # or compute_score_batch with
    reward_model.reward_manager=batch                      # (the batched variant)
    +custom_reward_function.reward_kwargs.url=http://127.0.0.1:8000

Each call returns ``{"score": reward, "reward_mean": E[r], "reward_std": Std[r]}``:
verl trains on ``score`` and logs the other keys. ``reward`` is the server's
penalised reward (``--objective``, or ``objective=`` here).

The prompt: verl hands a reward function the decoded response (``solution_str``),
not the prompt, so the prompt comes from ``extra_info`` — ``extra_info["prompt"]``,
else ``extra_info["question"]`` (verl's GSM8K and MATH preprocessing write it), or
the key named by ``prompt_key=`` — or from ``prompt=`` itself. A row without one is
refused with a message rather than scored against an empty prompt.
``data_source`` and ``ground_truth`` are accepted and not used: the reward model
judges the response.

Many verl reward workers calling ``compute_score`` at once are what the server's
dynamic batcher is for: their rows are coalesced into a few engine calls. The
client behind these functions (:class:`auq.serve.RewardClient`, standard library
only) is cached per (url, api_key, timeout).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from auq.serve.client import RewardClient

__all__ = ["PROMPT_KEYS", "compute_score", "compute_score_batch"]

#: where the prompt is looked for in ``extra_info``, in order
PROMPT_KEYS = ("prompt", "question")


@functools.lru_cache(maxsize=8)
def _client(url: str | None, api_key: str | None, timeout: float) -> RewardClient:
    return RewardClient(url, api_key=api_key, timeout=timeout)


def _prompt(extra_info: Any, prompt: Any, prompt_key: str | None, where: str) -> Any:
    if prompt is not None:
        return prompt
    keys = PROMPT_KEYS if prompt_key is None else (prompt_key,)
    if isinstance(extra_info, Mapping):
        for key in keys:
            value = extra_info.get(key)
            if isinstance(value, str) or (isinstance(value, list | tuple) and value):
                return value if isinstance(value, str) else list(value)
    found = (
        "no extra_info"
        if not isinstance(extra_info, Mapping)
        else (f"extra_info keys {sorted(map(str, extra_info))}")
    )
    wanted = " or ".join(f"extra_info[{k!r}]" for k in keys)
    raise ValueError(
        f"{where}: no prompt to score the response against ({found}); verl passes only the "
        f"response, so put the prompt in {wanted}, name its key with prompt_key=..., or "
        "pass prompt=..."
    )


def _row(prompt: Any, response: Any) -> tuple[Any, Any]:
    """A (prompt, response) row of one kind: a chat prompt gets an assistant message."""
    response = str(response)
    if isinstance(prompt, str):
        return prompt, response
    return [dict(m) for m in prompt], [{"role": "assistant", "content": response}]


def _options(objective, lam, k, beta) -> dict[str, Any]:
    given = {"objective": objective, "lam": lam, "k": k, "beta": beta}
    return {key: value for key, value in given.items() if value is not None}


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    objective: str | None = None,
    lam: float | None = None,
    k: float | None = None,
    beta: float | None = None,
    prompt: Any = None,
    prompt_key: str | None = None,
    timeout: float = 300.0,
    **kwargs: Any,
) -> dict[str, float]:
    """verl's ``compute_score``: the reward of one response from ``auq serve``.

    Parameters
    ----------
    data_source, ground_truth
        Passed by verl; not used.
    solution_str : str
        The decoded response.
    extra_info : dict, optional
        verl's per-row extra info; holds the prompt (see the module docstring).
    url : str, optional
        The server; default ``$AUQ_SERVER_URL``, else ``http://127.0.0.1:8000``.
    api_key : str, optional
        Default ``$AUQ_API_KEY``.
    objective, lam, k, beta : optional
        The penalised reward; default: the server's ``--objective`` and options.
    prompt : str or list of messages, optional
        The prompt itself (instead of ``extra_info``).
    prompt_key : str, optional
        The ``extra_info`` key of the prompt.
    timeout : float
        Seconds to wait for the server.
    **kwargs
        Further keywords verl passes (accepted, not used).

    Returns
    -------
    dict
        ``{"score", "reward_mean", "reward_std"}``.

    Raises
    ------
    ValueError
        No prompt found.
    auq.serve.ServerError
        The server refused the row or could not be reached.
    """
    row = _row(_prompt(extra_info, prompt, prompt_key, "compute_score"), solution_str)
    client = _client(url, api_key, float(timeout))
    out = client.score([row[0]], [row[1]], **_options(objective, lam, k, beta))
    return {"score": out["reward"][0], "reward_mean": out["mean"][0], "reward_std": out["std"][0]}


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    objective: str | None = None,
    lam: float | None = None,
    k: float | None = None,
    beta: float | None = None,
    prompts: Sequence[Any] | None = None,
    prompt_key: str | None = None,
    chunk_rows: int = 1024,
    timeout: float = 300.0,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """verl's batched ``compute_score`` (``reward_model.reward_manager=batch``).

    The rows go to the server ``chunk_rows`` at a time (keep it at or below the
    server's ``--max-request-rows``). Parameters as :func:`compute_score`, one
    item per row (``prompts=`` instead of ``prompt=``).

    Returns
    -------
    list of dict
        One ``{"score", "reward_mean", "reward_std"}`` per row, in order.
    """
    n = len(solution_strs)
    if extra_infos is None:
        extra_infos = [None] * n
    if len(extra_infos) != n or (prompts is not None and len(prompts) != n):
        raise ValueError(
            f"solution_strs has {n} rows but extra_infos {len(extra_infos)}"
            + ("" if prompts is None else f" and prompts {len(prompts)}")
        )
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    rows = [
        _row(
            _prompt(info, None if prompts is None else prompts[i], prompt_key, f"row {i}"),
            solution_strs[i],
        )
        for i, info in enumerate(extra_infos)
    ]
    client = _client(url, api_key, float(timeout))
    options = _options(objective, lam, k, beta)
    out: list[dict[str, float]] = []
    for start in range(0, n, chunk_rows):
        chunk = rows[start : start + chunk_rows]
        answer = client.score([p for p, _ in chunk], [r for _, r in chunk], **options)
        out += [
            {"score": s, "reward_mean": m, "reward_std": d}
            for s, m, d in zip(answer["reward"], answer["mean"], answer["std"], strict=True)
        ]
    return out
