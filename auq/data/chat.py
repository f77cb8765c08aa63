"""Rendering conversational rows (lists of messages) into (prompt, response) texts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auq.data.validation import PreferenceDataError, RowError, check_messages

__all__ = ["render_conversation", "render_pair_texts"]


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_conversation(
    messages: str | Sequence[Mapping[str, str]],
    tokenizer: Any = None,
    *,
    add_generation_prompt: bool = False,
) -> str:
    """Render a message list to text; plain strings pass through unchanged.

    With a tokenizer that has a ``chat_template`` this is
    ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``.
    Otherwise each message becomes ``"{role}: {content}\\n"`` (``add_generation_prompt``
    is then ignored: the role prefix belongs to the response).
    """
    if isinstance(messages, str):
        return messages
    msgs = list(messages)
    try:
        check_messages(None, msgs)
    except RowError as err:
        raise PreferenceDataError(f"messages: {err.reason}") from None
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs)


def render_prompt(prompt: Any, tokenizer: Any) -> str:
    return render_conversation(prompt, tokenizer, add_generation_prompt=True)


def render_pair_texts(prompt: Any, response: Any, tokenizer: Any = None) -> tuple[str, str]:
    """Turn a (prompt, response) into ``(prompt_text, response_text)``.

    Strings pass through. For message lists with a chat template, ``prompt_text`` is
    the prompt rendered with the generation prompt and ``response_text`` the rest of
    the full conversation's rendering when ``prompt_text`` is its prefix (else the
    response rendered alone). Without a template, the plain ``"{role}: {content}\\n"``
    format of :func:`render_conversation` is used for each part.
    """
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt, response
    if isinstance(prompt, str) or isinstance(response, str):
        raise TypeError("prompt and response must both be str or both be message lists")
    if not _has_chat_template(tokenizer):
        return render_conversation(prompt), render_conversation(response)
    prompt_text = render_prompt(prompt, tokenizer)
    full = render_conversation([*prompt, *response], tokenizer)
    if full.startswith(prompt_text):
        return prompt_text, full[len(prompt_text) :]
    return prompt_text, render_conversation(response, tokenizer)
