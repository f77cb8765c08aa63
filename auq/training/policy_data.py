"""Preference pairs as token ids for DPO: prompt, chosen and rejected, truncated to fit.

Format
------
Plain-text rows (TRL's ``prompt`` / ``chosen`` / ``rejected`` strings):

* prompt tokens = ``tokenizer(prompt)["input_ids"]`` (with the tokenizer's BOS
  when it adds one);
* response tokens = ``tokenizer(response, add_special_tokens=False)["input_ids"]``
  followed by ``eos_token_id`` (unless the text already ends with it), so the
  policy learns to stop. The response is tokenised on its own, as the policy
  generates it after the prompt; a response carries its own leading space
  (``" Rinse it."``), as in TRL datasets.

Conversational rows (lists of ``{"role", "content"}`` messages) need a tokenizer
with a ``chat_template``:

* prompt tokens = ``apply_chat_template(prompt, add_generation_prompt=True,
  tokenize=True)``;
* response tokens = the rest of ``apply_chat_template(prompt + response,
  tokenize=True)`` after the prompt tokens: whatever the template writes for the
  assistant turn (its end-of-turn marker included; no EOS is added). When a
  template renders the prompt alone differently from the start of the whole
  conversation, the prompt is cut to the tokens the two share (as TRL does) and a
  warning says how many rows that touched.

Truncation
----------
A prompt longer than ``max_prompt_length`` keeps its *last* tokens (TRL's
``keep_end``: the words nearest the response survive); a leading BOS is kept in
front of them. Then each response keeps its *first* ``max_length − len(prompt)``
tokens. Both cuts are counted in :class:`TokenizedPairs` and reported in one
:class:`~auq.types.TruncationWarning`; nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from auq.data import PreferenceDataError, PreferenceDataset, as_preference_dataset
from auq.data.validation import REQUIRED_COLUMNS
from auq.types import TruncationWarning
from auq.utils.console import get_logger, warn_user
from auq.utils.validation import check_positive_int

__all__ = ["TokenizedPairs", "tokenize_pairs", "tokenize_responses"]

logger = get_logger("auq.training")

_REQUIRED = ", ".join(map(repr, REQUIRED_COLUMNS))


@dataclass
class TokenizedPairs:
    """N preference pairs as token ids, ready for :func:`~auq.training.logprobs.collate_sequences`.

    Attributes
    ----------
    prompt_ids, chosen_ids, rejected_ids : list of N lists of int
        Unpadded token ids; ``prompt_ids[i] + chosen_ids[i]`` is at most ``max_length``.
    n_pairs : int
        N.
    n_truncated_prompts : int
        Prompts cut to ``max_prompt_length`` (at most N).
    n_truncated_responses : int
        Responses cut to fit ``max_length``, chosen and rejected counted apart (at most 2N).
    rows : list of N int
        Index of each pair in the caller's dataset (rows skipped while loading with
        ``on_error="skip"`` are missing).
    weight, margin : np.ndarray of float64, shape (N,), or None
        The dataset's ``weight`` / ``margin`` columns for the kept pairs, when present.
    """

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    n_pairs: int
    n_truncated_prompts: int
    n_truncated_responses: int
    rows: list[int]
    weight: np.ndarray | None = None
    margin: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n_pairs


# -- options and tokenizer facts -------------------------------------------------------------


def _check_lengths(max_length: int | None, max_prompt_length: int | None) -> None:
    if max_length is None and max_prompt_length is None:
        return
    if max_length is None or max_prompt_length is None:
        raise ValueError(
            "max_length and max_prompt_length go together: give both or neither, got "
            f"max_length={max_length!r}, max_prompt_length={max_prompt_length!r}"
        )
    check_positive_int("max_length", max_length, minimum=2)
    check_positive_int("max_prompt_length", max_prompt_length)
    if max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length={max_prompt_length} must be < max_length={max_length}, so "
            "that every response keeps at least one token after a truncated prompt"
        )


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            "the tokenizer has no eos_token_id to end plain-text responses with; set "
            "tokenizer.eos_token (the policy must learn where a response stops)"
        )
    return int(eos)


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "conversational rows (lists of messages) need a tokenizer with a chat_template; "
            "set tokenizer.chat_template, or pass plain-text rows (e.g. "
            "PreferenceDataset.render(tokenizer))"
        )


def _encode(tokenizer: Any, texts: list[str], *, special: bool) -> list[list[int]]:
    """Token ids of ``texts`` in one batched call (duplicates encoded once)."""
    if not texts:
        return []
    unique = list(dict.fromkeys(texts))
    encoded = tokenizer(unique, add_special_tokens=special)["input_ids"]
    by_text = dict(zip(unique, encoded, strict=True))
    return [list(by_text[t]) for t in texts]


def _render(tokenizer: Any, conversations: list[list[dict]], *, generation: bool) -> list[str]:
    """Chat-template renderings, one per distinct conversation."""
    cache: dict[str, str] = {}
    out = []
    for messages in conversations:
        key = repr(messages)
        if key not in cache:
            cache[key] = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
        out.append(cache[key])
    return out


def _plain_prompts(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    ids = _encode(tokenizer, prompts, special=True)
    bos = getattr(tokenizer, "bos_token_id", None)
    for i, p in enumerate(ids):
        if not p:
            if bos is None:
                raise ValueError(
                    f"prompt {i} ({prompts[i]!r}) tokenises to no tokens and the tokenizer has "
                    "no BOS to start from; a response needs at least one token before it"
                )
            ids[i] = [int(bos)]
    return ids


def _plain_responses(
    tokenizer: Any, responses: list[str], append_eos: Sequence[bool]
) -> list[list[int]]:
    eos = _eos_id(tokenizer) if any(append_eos) else None
    ids = _encode(tokenizer, responses, special=False)
    for r, add in zip(ids, append_eos, strict=True):
        if add and (not r or r[-1] != eos):
            r.append(eos)
    return ids


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _chat_split(
    tokenizer: Any, prompts: list[list[dict]], *responses: list[list[dict]]
) -> tuple[list[list[int]], list[list[list[int]]], int]:
    """Prompt ids and, per response column, the continuation ids; rows whose prompt was cut."""
    _require_chat_template(tokenizer)
    prompt_ids = _encode(tokenizer, _render(tokenizer, prompts, generation=True), special=False)
    fulls = []
    for col in responses:
        whole = [[*p, *r] for p, r in zip(prompts, col, strict=True)]
        fulls.append(_encode(tokenizer, _render(tokenizer, whole, generation=False), special=False))
    out_prompts: list[list[int]] = []
    out_responses: list[list[list[int]]] = [[] for _ in responses]
    n_mismatch = 0
    for i, p in enumerate(prompt_ids):
        cut = min(_common_prefix(p, full[i]) for full in fulls)
        if cut == 0:
            raise PreferenceDataError(
                f"row {i}: the chat template's rendering of the prompt and of the whole "
                "conversation share no leading token; cannot tell where the response starts"
            )
        n_mismatch += cut < len(p)
        out_prompts.append(p[:cut])
        for j, full in enumerate(fulls):
            rest = full[i][cut:]
            if not rest:
                raise PreferenceDataError(
                    f"row {i}: the chat template renders no tokens for the response after "
                    "the prompt; check that it writes assistant messages"
                )
            out_responses[j].append(rest)
    if n_mismatch:
        warn_user(
            f"for {n_mismatch} of {len(prompt_ids)} rows the chat template renders the prompt "
            "alone differently from the start of the whole conversation; their prompts were "
            "cut to the tokens the two share, so training sees a slightly different context "
            "than generation"
        )
    return out_prompts, out_responses, n_mismatch


# -- truncation ---------------------------------------------------------------------------


def _truncate(
    prompt_ids: list[list[int]],
    responses: Sequence[list[list[int]]],
    *,
    max_length: int,
    max_prompt_length: int,
    bos: int | None,
) -> tuple[int, int]:
    """Cut in place: prompts keep their end (and a leading BOS), responses their start."""
    n_prompts = n_responses = 0
    for i, p in enumerate(prompt_ids):
        if len(p) > max_prompt_length:
            head = [p[0]] if bos is not None and p[0] == bos and max_prompt_length > 1 else []
            p = head + p[len(p) - (max_prompt_length - len(head)) :]
            prompt_ids[i] = p
            n_prompts += 1
        budget = max_length - len(p)
        for col in responses:
            if len(col[i]) > budget:
                col[i] = col[i][:budget]
                n_responses += 1
    return n_prompts, n_responses


def _report(what: str, n: int, n_prompts: int, n_responses: int, n_resp_total: int, opts: str):
    if n_prompts or n_responses:
        message = (
            f"{what}: {n_prompts} of {n} prompts cut to their last tokens and {n_responses} of "
            f"{n_resp_total} responses cut at their end to fit {opts}"
        )
        logger.info(message)
        warn_user(message, TruncationWarning)


# -- entry points -------------------------------------------------------------------------


def _missing_column_hint(err: PreferenceDataError) -> PreferenceDataError:
    text = str(err)
    if "missing required column" in text:
        text += (
            f"; tokenize_pairs needs TRL's preference columns {_REQUIRED} ('prompt' may be "
            "left out when 'chosen' and 'rejected' both begin with it)"
        )
    return PreferenceDataError(text)


def tokenize_pairs(
    dataset: Any,
    tokenizer: Any,
    *,
    max_length: int = 512,
    max_prompt_length: int = 256,
    on_error: str = "raise",
) -> TokenizedPairs:
    """Tokenise preference pairs for DPO (see the module docstring for the format).

    Parameters
    ----------
    dataset : PreferenceDataset, datasets.Dataset, pandas.DataFrame, list of dict or dict
        Anything :func:`auq.data.as_preference_dataset` accepts, in TRL's columns
        ``prompt``, ``chosen``, ``rejected`` (plain text or conversational).
    tokenizer : PreTrainedTokenizerBase
        The policy's tokenizer; conversational rows need its ``chat_template``.
    max_length : int
        Longest prompt + response, in tokens.
    max_prompt_length : int
        Longest prompt, in tokens; must be < ``max_length``.
    on_error : {"raise", "skip"}
        How invalid rows are handled while loading (see :class:`~auq.PreferenceDataset`).

    Returns
    -------
    TokenizedPairs

    Raises
    ------
    PreferenceDataError
        Invalid rows or a missing column (the message names the row / the column and
        the required ones).
    ValueError
        Bad lengths, a tokenizer without an EOS (plain rows) or a chat template
        (conversational rows).
    """
    _check_lengths(max_length, max_prompt_length)
    try:
        ds = as_preference_dataset(dataset, name="dataset", on_error=on_error)
    except PreferenceDataError as err:
        raise _missing_column_hint(err) from None
    n = len(ds)
    if ds is dataset or isinstance(dataset, PreferenceDataset):
        rows = list(range(n))
    else:
        skipped = {i for i, _, _ in ds.skipped}
        rows = [i for i in range(n + len(skipped)) if i not in skipped]
    prompts, chosen, rejected = ds.prompts, ds.chosen, ds.rejected
    if ds.is_conversational:
        prompt_ids, (chosen_ids, rejected_ids), _ = _chat_split(
            tokenizer, prompts, chosen, rejected
        )
    else:
        prompt_ids = _plain_prompts(tokenizer, prompts)
        eos = [True] * n
        chosen_ids = _plain_responses(tokenizer, chosen, eos)
        rejected_ids = _plain_responses(tokenizer, rejected, eos)
    n_prompts, n_responses = _truncate(
        prompt_ids,
        (chosen_ids, rejected_ids),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        bos=getattr(tokenizer, "bos_token_id", None),
    )
    opts = f"max_prompt_length={max_prompt_length}, max_length={max_length}"
    _report("tokenize_pairs", n, n_prompts, n_responses, 2 * n, opts)
    return TokenizedPairs(
        prompt_ids=prompt_ids,
        chosen_ids=chosen_ids,
        rejected_ids=rejected_ids,
        n_pairs=n,
        n_truncated_prompts=n_prompts,
        n_truncated_responses=n_responses,
        rows=rows,
        weight=None if ds.weight is None else np.array(ds.weight),
        margin=None if ds.margin is None else np.array(ds.margin),
    )


def tokenize_responses(
    tokenizer: Any,
    prompts: Sequence[Any],
    responses: Sequence[str],
    *,
    append_eos: bool | Sequence[bool] = True,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of sampled (prompt, response) pairs, by the rules of :func:`tokenize_pairs`.

    For online DPO: ``responses`` are the texts a policy generated for ``prompts``.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
    prompts : sequence of N prompts
        Texts, or chats (lists of ``{"role", "content"}`` messages, rendered with the
        chat template and its generation prompt, as :class:`~auq.training.HFGenerator`
        does).
    responses : sequence of N str
        Generated text (new tokens only, special tokens stripped).
    append_eos : bool or sequence of N bool
        Append ``eos_token_id`` to every response, to none, or per response — pass
        ``~stats.truncated.ravel()`` so a response cut at ``max_new_tokens`` does not
        learn to stop there.
    max_length, max_prompt_length : int, optional
        Truncate as :func:`tokenize_pairs` does (give both or neither).

    Returns
    -------
    prompt_ids, response_ids : lists of N lists of int
    """
    _check_lengths(max_length, max_prompt_length)
    prompts, responses = list(prompts), list(responses)
    n = len(prompts)
    if len(responses) != n:
        raise ValueError(
            f"prompts has {n} items but responses has {len(responses)}; they must pair up"
        )
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise TypeError(f"responses[{i}] must be a str, got {type(r).__name__}")
    if isinstance(append_eos, bool | np.bool_):
        flags = [bool(append_eos)] * n
    else:
        flags = [bool(f) for f in append_eos]
        if len(flags) != n:
            raise ValueError(
                f"append_eos has {len(flags)} flags but there are {n} responses; give one "
                "per response, or a single bool"
            )
    chat = [not isinstance(p, str) for p in prompts]
    if any(chat) and not all(chat):
        raise TypeError("prompts mixes texts and chats (message lists); give one kind")
    if n and chat[0]:
        _require_chat_template(tokenizer)
        texts = _render(tokenizer, [list(p) for p in prompts], generation=True)
        prompt_ids = _encode(tokenizer, texts, special=False)
    else:
        prompt_ids = _plain_prompts(tokenizer, prompts)
    response_ids = _plain_responses(tokenizer, responses, flags)
    if max_length is not None and max_prompt_length is not None:
        n_prompts, n_responses = _truncate(
            prompt_ids,
            (response_ids,),
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            bos=getattr(tokenizer, "bos_token_id", None),
        )
        opts = f"max_prompt_length={max_prompt_length}, max_length={max_length}"
        _report("tokenize_responses", n, n_prompts, n_responses, n, opts)
    return prompt_ids, response_ids
