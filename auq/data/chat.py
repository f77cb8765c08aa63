"""Rendering conversational rows (lists of messages) into text.

Two renderings, chosen by the tokenizer:

* with a ``chat_template``: ``tokenizer.apply_chat_template(messages, tokenize=False)``
  — the template writes its own special tokens, so the text is tokenised without
  adding any (as ``apply_chat_template(..., tokenize=True)`` and TRL do);
* without one: each message becomes ``"{role}: {content}\\n"``, plain text that is
  tokenised like any other (the model's special tokens are added).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auq.data.validation import PreferenceDataError, RowError, check_messages

__all__ = [
    "has_chat_template",
    "render_chat",
    "render_conversation",
    "render_pair_texts",
    "render_prompt",
]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_conversation(
    messages: str | Sequence[Mapping[str, str]],
    tokenizer: Any = None,
    *,
    add_generation_prompt: bool = False,
    where: str = "messages",
) -> str:
    """Render a message list to text; plain strings pass through unchanged.

    With a tokenizer that has a ``chat_template`` this is
    ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``.
    Otherwise each message becomes ``"{role}: {content}\\n"`` (``add_generation_prompt``
    is then ignored: the role prefix belongs to the response).

    Parameters
    ----------
    where : str
        Names the messages in error messages (e.g. ``"row 3, prompt"``).
    """
    if isinstance(messages, str):
        return messages
    msgs = list(messages)
    try:
        check_messages(None, msgs)
    except RowError as err:
        raise PreferenceDataError(f"{where}: {err.reason}") from None
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs)


def render_prompt(prompt: Any, tokenizer: Any, *, where: str = "messages") -> str:
    """A prompt rendered for generation (the template's generation prompt appended)."""
    return render_conversation(prompt, tokenizer, add_generation_prompt=True, where=where)


def render_chat(
    prompt: Sequence[Mapping[str, str]],
    response: Sequence[Mapping[str, str]],
    tokenizer: Any,
    *,
    prompt_text: str | None = None,
    where: str = "messages",
) -> tuple[str, int]:
    """The whole conversation as the chat template renders it, and where the response starts.

    Parameters
    ----------
    prompt, response : list of message dicts
    tokenizer : tokenizer with a ``chat_template``
    prompt_text : str, optional
        ``render_prompt(prompt, tokenizer)`` when the caller already has it (one
        rendering per distinct prompt).
    where : str
        Names the row in error messages.

    Returns
    -------
    text : str
        ``apply_chat_template(prompt + response, tokenize=False)`` — what TRL tokenises.
    response_start : int
        Characters of ``text`` that belong to the prompt: the length of the prefix it
        shares with the prompt rendered for generation (templates that render the
        prompt differently alone still get a sensible boundary).
    """
    if prompt_text is None:
        prompt_text = render_prompt(prompt, tokenizer, where=f"{where}, prompt")
    render_conversation(response, None, where=f"{where}, response")  # validates
    text = render_conversation([*prompt, *response], tokenizer, where=where)
    start = 0
    for a, b in zip(text, prompt_text, strict=False):
        if a != b:
            break
        start += 1
    return text, start


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
    if not has_chat_template(tokenizer):
        return render_conversation(prompt), render_conversation(response)
    prompt_text = render_prompt(prompt, tokenizer)
    full = render_conversation([*prompt, *response], tokenizer)
    if full.startswith(prompt_text):
        return prompt_text, full[len(prompt_text) :]
    return prompt_text, render_conversation(response, tokenizer)
