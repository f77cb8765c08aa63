"""Tokenisation of (prompt, response) rows: the text format per backbone kind, and truncation.

Text format
-----------
One encoder, :class:`TextEncoder`, with two options set by the backbone
(:class:`auq.backbone.Backbone` picks them):

==========================  =================  ==========  ===============================
backbone kind               ``pair_encoding``  EOS added   plain-text row becomes
==========================  =================  ==========  ===============================
reward checkpoint (TRL)     False              yes [1]_    ``tokenizer(prompt + response + eos)``
plain decoder (AutoModel)   False              no          ``tokenizer(prompt + response)``
plain encoder (AutoModel)   True               no          ``tokenizer(prompt, response)``
==========================  =================  ==========  ===============================

.. [1] As TRL's ``RewardTrainer`` does: ``tokenizer.eos_token`` is appended to the
   response unless it already ends with it, and the prompt and response are
   tokenised as ONE string (BPE merges across their boundary are kept, and an
   encoder gets one segment ``[CLS] … [SEP]``, not a sentence pair). A tokenizer
   without an EOS token gets nothing appended (TRL itself then needs
   ``RewardConfig(eos_token=...)``, which it saves with the tokenizer).

Joined strings are concatenated verbatim, with no separator: as in TRL datasets, a
response carries its own leading space or newline (``" Rinse it."``).

Conversational rows (``prompt`` and ``response`` lists of ``{"role", "content"}``
messages), for every backbone kind:

* tokenizer with a chat template: ``apply_chat_template(prompt + response)``
  tokenised without added special tokens (the template writes its own) and without
  an EOS — exactly ``apply_chat_template(..., tokenize=True)``, as TRL does;
* no chat template: each message rendered as ``"{role}: {content}\\n"``
  (:func:`auq.data.chat.render_conversation`), then handled as a plain-text row
  of that backbone kind, the model's special tokens included.

``add_special_tokens=False`` marks plain-text rows the caller already rendered with
a chat template: the joined ``prompt + response`` is then tokenised as it is.

Truncation policy
-----------------
Rows within ``max_length`` tokens are exactly what the tokenizer makes of the text
above. (TRL drops longer rows from training instead, so for them there is no
training-time score to reproduce.) A longer row is cut at token level, the
prompt/response boundary found from the fast tokenizer's character offsets (a token
straddling it counts as prompt):

1. the response keeps as many tokens as fit beside ``min(len(prompt), min_prompt_tokens)``
   prompt tokens, cut from its *end* (the start of an answer carries most of it);
2. the prompt fills what is left, cut from its *start*, so the words nearest the
   response survive;
3. special tokens and the trailing EOS of a reward-checkpoint row are never cut.

:class:`TruncationStats` counts how many prompts and responses were cut.

Cost: texts are tokenised in bulk by the Rust backend, once each; a distinct prompt
is tokenised (sentence pairs) or rendered for its boundary (chat rows) once. Joined
texts are tokenised whole, prompt included, because that is what makes them exact.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from auq.data.chat import has_chat_template, render_chat, render_conversation, render_prompt
from auq.types import TruncationStats

__all__ = ["TextEncoder", "TokenizedTexts", "TruncationStats"]


@dataclass
class TokenizedTexts:
    """Token ids of N (prompt, response) texts, unpadded.

    Attributes
    ----------
    input_ids : list of list of int, length N
    token_type_ids : list of list of int or None
        Segment ids (sentence pairs of encoders), else None.
    stats : TruncationStats
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    stats: TruncationStats = field(default_factory=TruncationStats)
    _packed: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per item, shape (N,)."""
        return np.diff(self.packed[1])

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def packed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The ids as one flat array, for vectorised collation (built once, then cached).

        Returns
        -------
        (flat_ids, offsets, flat_type_ids)
            ``flat_ids`` int64 (T,) — every item's ids one after the other;
            ``offsets`` int64 (N + 1,) — item i is ``flat_ids[offsets[i]:offsets[i + 1]]``;
            ``flat_type_ids`` the same layout for segment ids, or None.
        """
        if self._packed is None:
            lengths = np.fromiter(map(len, self.input_ids), dtype=np.int64, count=len(self))
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            total = int(offsets[-1])
            flat = np.fromiter(chain.from_iterable(self.input_ids), dtype=np.int64, count=total)
            types = None
            if self.token_type_ids is not None:
                types = np.fromiter(
                    chain.from_iterable(self.token_type_ids), dtype=np.int64, count=total
                )
            self._packed = (flat, offsets, types)
        return self._packed

    def subset(self, indices: np.ndarray | list[int]) -> TokenizedTexts:
        """The selected items (same order as ``indices``), sharing no state with ``self``."""
        types = self.token_type_ids
        return TokenizedTexts(
            input_ids=[self.input_ids[i] for i in indices],
            token_type_ids=None if types is None else [types[i] for i in indices],
            stats=self.stats,
        )


@dataclass
class _Joined:
    """Rows tokenised as one string: text, where the response starts, where the suffix starts."""

    rows: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    response_start: list[int] = field(default_factory=list)
    suffix_start: list[int] = field(default_factory=list)

    def add(self, row: int, text: str, response_start: int, suffix_start: int) -> None:
        self.rows.append(row)
        self.texts.append(text)
        self.response_start.append(response_start)
        self.suffix_start.append(suffix_start)


class TextEncoder:
    """Turns (prompt, response) rows into token ids; see the module docstring for the format.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        A fast Hugging Face tokenizer (its Rust backend does the work).
    max_length : int
        Longest sequence, special tokens included.
    pair_encoding : bool
        Plain-text rows as a sentence pair ``tokenizer(prompt, response)`` (encoders)
        instead of one string ``tokenizer(prompt + response)``.
    append_eos : bool
        Append ``tokenizer.eos_token`` to plain-text responses that do not end with
        it (TRL's reward-model format); needs ``pair_encoding=False``.
    min_prompt_tokens : int
        Prompt tokens kept, where the prompt has them, before the response is cut.
    """

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int,
        pair_encoding: bool = False,
        append_eos: bool = False,
        min_prompt_tokens: int = 32,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4:
            raise ValueError(f"max_length must be an integer >= 4, got {max_length!r}")
        if pair_encoding and append_eos:
            raise ValueError("append_eos=True needs pair_encoding=False (one joined string)")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"{type(tokenizer).__name__} has no fast (Rust) backend; auq needs a fast "
                "tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pair_encoding = pair_encoding
        self.append_eos = append_eos
        self.min_prompt_tokens = min_prompt_tokens
        # a private copy: the saved tokenizer may carry padding/truncation settings
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()

    @property
    def eos_token(self) -> str | None:
        """The text appended to plain-text responses (None when nothing is)."""
        return self.tokenizer.eos_token if self.append_eos else None

    # -- entry point ----------------------------------------------------------------
    def encode(
        self,
        prompts: Sequence[Any],
        responses: Sequence[Any],
        *,
        add_special_tokens: bool = True,
    ) -> TokenizedTexts:
        """Tokenise N (prompt, response) rows.

        Parameters
        ----------
        prompts, responses : sequences of N items
            Each a str, or a list of ``{"role", "content"}`` messages (both of a row
            the same kind).
        add_special_tokens : bool
            False for plain-text rows already rendered by a chat template: the joined
            text is tokenised as it is (no special tokens, no EOS).

        Returns
        -------
        TokenizedTexts
        """
        if len(prompts) != len(responses):
            raise ValueError(
                f"prompts and responses must have the same length, got {len(prompts)} "
                f"and {len(responses)}"
            )
        n = len(prompts)
        stats = TruncationStats(n_items=n)
        ids: list[list[int] | None] = [None] * n
        types: list[list[int] | None] | None = [None] * n if self.pair_encoding else None
        special, plain, pairs = self._layout(prompts, responses, add_special_tokens)
        self._encode_joined(special, True, ids, types, stats)
        self._encode_joined(plain, False, ids, types, stats)
        if pairs:
            self._encode_pairs(pairs, ids, types, stats)
        return TokenizedTexts(input_ids=ids, token_type_ids=types, stats=stats)

    # -- rows to texts ----------------------------------------------------------------
    def _layout(self, prompts, responses, add_special_tokens: bool):
        """Sort rows into joined texts with / without special tokens, and sentence pairs."""
        special, plain = _Joined(), _Joined()  # joined: special tokens added / not
        pairs: list[tuple[int, str, str]] = []
        chat = has_chat_template(self.tokenizer)
        prompt_texts: dict[str, str] = {}  # one generation-prompt rendering per prompt
        eos = self.eos_token
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            p_str, r_str = isinstance(prompt, str), isinstance(response, str)
            if p_str != r_str or (not p_str and not _is_message_list(prompt, response)):
                raise TypeError(
                    f"row {i}: prompt and response must both be str or both be lists of "
                    f"{{'role', 'content'}} messages, got {type(prompt).__name__} and "
                    f"{type(response).__name__}"
                )
            if not p_str and chat:
                key = json.dumps(list(prompt), sort_keys=True, default=str)
                if key not in prompt_texts:
                    prompt_texts[key] = render_prompt(
                        prompt, self.tokenizer, where=f"row {i}, prompt"
                    )
                text, start = render_chat(
                    prompt,
                    response,
                    self.tokenizer,
                    prompt_text=prompt_texts[key],
                    where=f"row {i}",
                )
                plain.add(i, text, start, len(text))
                continue
            if not p_str:  # no template: "{role}: {content}\n" text, then a plain row
                prompt = render_conversation(prompt, where=f"row {i}, prompt")
                response = render_conversation(response, where=f"row {i}, response")
            if not add_special_tokens:
                plain.add(i, prompt + response, len(prompt), len(prompt) + len(response))
            elif self.pair_encoding:
                pairs.append((i, prompt, response))
            else:
                core = response
                if eos:  # TRL: append EOS unless the response already ends with it
                    core = response[: -len(eos)] if response.endswith(eos) else response
                text = prompt + core + (eos or "")
                special.add(i, text, len(prompt), len(prompt) + len(core))
        return special, plain, pairs

    # -- joined texts -----------------------------------------------------------------
    def _encode_joined(self, joined: _Joined, add_special: bool, ids, types, stats) -> None:
        if not joined.rows:
            return
        encodings = self._backend.encode_batch(joined.texts, add_special_tokens=add_special)
        for j, enc in enumerate(encodings):
            row = joined.rows[j]
            keep = None
            if len(enc.ids) > self.max_length:  # text tokens split by character offsets
                special = enc.special_tokens_mask  # 1: added by the post-processor
                offsets = enc.offsets
                text = [k for k, m in enumerate(special) if not m]
                starts = [offsets[k][0] for k in text]
                n_prompt = bisect_left(starts, joined.response_start[j])
                n_end = len(text) - max(n_prompt, bisect_left(starts, joined.suffix_start[j]))
                n_response = len(text) - n_prompt - n_end
                budget = max(self.max_length - (len(special) - len(text)) - n_end, 0)
                keep_p, keep_r = self._fit(n_prompt, n_response, budget, stats)
                kept = {*text[n_prompt - keep_p : n_prompt + keep_r], *text[len(text) - n_end :]}
                keep = (special, kept)
            ids[row] = _kept(enc.ids, keep)
            if types is not None:
                types[row] = _kept(enc.type_ids, keep)

    # -- sentence pairs -----------------------------------------------------------------
    def _encode_pairs(self, pairs: list[tuple[int, str, str]], ids, types, stats) -> None:
        backend = self._backend
        unique = list(dict.fromkeys(p for _, p, _ in pairs))
        index = {p: k for k, p in enumerate(unique)}
        prompt_enc = backend.encode_batch(unique, add_special_tokens=False)
        response_enc = backend.encode_batch([r for _, _, r in pairs], add_special_tokens=False)
        for (row, prompt, _), r_enc in zip(pairs, response_enc, strict=True):
            p_enc = prompt_enc[index[prompt]]
            enc = backend.post_process(p_enc, r_enc, True)
            keep = None
            if len(enc.ids) > self.max_length:  # text tokens: the prompt's, then the response's
                special = enc.special_tokens_mask
                text = [k for k, m in enumerate(special) if not m]
                n_p = len(p_enc.ids)
                budget = self.max_length - (len(special) - len(text))
                keep_p, keep_r = self._fit(n_p, len(text) - n_p, budget, stats)
                keep = (special, {*text[n_p - keep_p : n_p + keep_r]})
            ids[row] = _kept(enc.ids, keep)
            types[row] = _kept(enc.type_ids, keep)

    def _fit(self, n_prompt: int, n_response: int, budget: int, stats) -> tuple[int, int]:
        """Tokens kept of the prompt and the response under the truncation policy."""
        if n_prompt + n_response <= budget:
            return n_prompt, n_response
        keep_r = min(n_response, budget - min(n_prompt, self.min_prompt_tokens, budget // 2))
        keep_p = min(n_prompt, budget - keep_r)
        stats.n_prompt_truncated += int(keep_p < n_prompt)
        stats.n_response_truncated += int(keep_r < n_response)
        return keep_p, keep_r


def _is_message_list(*values: Any) -> bool:
    return all(isinstance(v, Sequence) and not isinstance(v, (str, bytes)) for v in values)


def _kept(values: list[int], keep: tuple[list[int], set[int]] | None) -> list[int]:
    """``values`` at special-token positions and at the kept text positions (all if None)."""
    if keep is None:
        return values
    special, positions = keep
    return [v for k, (v, m) in enumerate(zip(values, special, strict=True)) if m or k in positions]
