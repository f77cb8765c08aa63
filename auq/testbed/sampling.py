"""Sampling responses from the reference policy: n per prompt, batched, seeded.

Prompts are left-padded (the tokenizer pads on the left) and each prompt is
repeated n times inside one ``generate`` call, so a whole best-of-n draw is a few
batched calls, not a loop over samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from auq.testbed.threads import cpu_threads
from auq.utils.console import progress_bar, warn_user
from auq.utils.seeding import seeded

__all__ = ["generate_responses"]


@torch.inference_mode()
def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int = 1,
    seed: int = 0,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 256,
    num_threads: int | None = 1,
    progress: bool | None = None,
) -> list[list[str]]:
    """Draw ``n`` responses for each prompt.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM whose ``generation_config`` samples (``reference_policy`` sets it).
    tokenizer : transformers.PreTrainedTokenizerFast
        Its tokenizer (left padding, ``<bos>`` prepended).
    prompts : sequence of str, length P
    n : int
        Responses per prompt.
    seed : int
        Seeds the sampling; the same seed, model, prompts and ``batch_size`` give the same
        responses (another ``batch_size`` draws the random numbers in another order).
    temperature : float, optional
        Overrides ``generation_config.temperature``.
    max_new_tokens : int, optional
        Overrides ``generation_config.max_new_tokens``; capped so that prompt plus response
        fit ``n_positions`` (a cap is warned about).
    batch_size : int
        Sequences per ``generate`` call.
    num_threads : int or None
        torch CPU threads while sampling on the CPU (see :mod:`auq.testbed.threads`);
        None leaves torch's setting alone.
    progress : bool or None

    Returns
    -------
    list of list of str, shape (P, n)
        Response texts without special tokens, in prompt order. Responses that reached
        the token limit before ``<eos>`` are kept (cut) and their count is warned about.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    gen = model.generation_config
    limit = max_new_tokens if max_new_tokens is not None else gen.max_new_tokens
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    n_positions = model.config.max_position_embeddings
    flat = [p for p in prompts for _ in range(n)]  # (P·n,) prompt-major
    out: list[str] = []
    n_cut = n_capped = 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        threads = num_threads if device.type == "cpu" else None
        with seeded(seed, device), cpu_threads(threads):
            for start in progress_bar(
                range(0, len(flat), batch_size), enabled=progress, desc="sampling responses"
            ):
                enc = tokenizer(flat[start : start + batch_size], return_tensors="pt", padding=True)
                width = enc["input_ids"].shape[1]
                room = n_positions - width
                if room < 1:
                    raise ValueError(
                        f"a prompt is {width} tokens long; the policy takes {n_positions} in all"
                    )
                steps = min(limit, room)
                n_capped += steps < limit
                kwargs = {"max_new_tokens": steps, "pad_token_id": pad, "eos_token_id": eos}
                if temperature is not None:
                    kwargs["temperature"] = temperature
                seqs = model.generate(**enc.to(device), **kwargs)  # (b, width + new)
                for row in seqs[:, width:].tolist():
                    if eos in row:
                        row = row[: row.index(eos)]
                    elif len(row) == steps:
                        n_cut += 1
                    out.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        model.train(was_training)
    if n_capped:
        warn_user(
            f"{n_capped} generate call(s) had max_new_tokens cut to fit n_positions={n_positions}"
        )
    if n_cut:
        warn_user(f"{n_cut} of {len(flat)} responses reached the token limit before <eos>")
    return [out[i * n : (i + 1) * n] for i in range(len(prompts))]
