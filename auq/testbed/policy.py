"""The testbed's reference policy: a tiny GPT-2 trained by SFT on a world's responses, cached.

Best-of-n and online DPO sample from it. :func:`reference_policy` returns
``(model, tokenizer)``; :func:`load_or_train_policy` returns the training record too
(losses, time, where it is cached, whether this call trained).

The first call for a world and config trains (a few CPU minutes at the default
:class:`PolicyConfig`) and writes ``<cache>/testbed/policy-<key>`` (see
:mod:`auq.testbed.cache`); later calls load it. A damaged cache folder is warned
about and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auq.testbed.cache import policy_dir, policy_key, publish_policy, read_policy
from auq.testbed.policy_config import PolicyConfig
from auq.testbed.sft import train_policy
from auq.utils.console import get_logger, warn_user
from auq.utils.io import CheckpointError

__all__ = [
    "PolicyConfig",
    "PolicyRecord",
    "load_or_train_policy",
    "reference_policy",
    "world_identity",
]

logger = get_logger("auq.testbed")

#: seed of the few texts that fingerprint a world (independent of any training seed)
_PROBE_SEED = 20240917
_PROBE_SIZE = 8
#: room for responses longer than the longest one seen in training
_LENGTH_SLACK = 1.25


@dataclass
class PolicyRecord:
    """What is known about a reference policy (the contents of its ``policy.json``).

    Attributes
    ----------
    key : str
        Cache key (world identity + config).
    path : str
        Its cache folder.
    trained : bool
        True if this call trained it, False if it came from the cache.
    config, world : dict
        The :class:`PolicyConfig` fields and :func:`world_identity`.
    initial_loss, final_loss : float
        Training loss at the first step / mean over the last tenth of the steps.
    eval_loss : float or None
        Per-token loss on ``n_eval`` held-out pairs, drawn like the training pairs.
    train_seconds : float
        Wall time of the training run that built it (tokenizer, SFT and held-out loss).
    n_examples, n_dropped : int
        Training pairs used / left out for exceeding ``n_positions``.
    max_new_tokens : int
        The generation limit set in ``generation_config``: 1.25 x the longest training
        response (with its ``<eos>``), capped so that the longest prompt still fits.
    vocab_size : int
        Tokens in the tokenizer (the special ones included).
    losses : list of float
        Training loss per step.
    """

    key: str
    path: str
    trained: bool
    config: dict[str, Any]
    world: dict[str, Any]
    initial_loss: float
    final_loss: float
    eval_loss: float | None
    train_seconds: float
    n_examples: int
    n_dropped: int
    max_new_tokens: int
    vocab_size: int
    losses: list[float] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON written to ``policy.json`` (without ``path`` and ``trained``)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("path", "trained")}


def world_identity(world) -> dict[str, Any]:
    """What distinguishes one world from another, for the cache key.

    The class, its ``seed``, ``version`` and ``fingerprint`` attributes where present,
    and a hash of a few prompts and responses it samples from its train region with a
    fixed seed (so a changed grammar gives a new key even when no attribute says so).
    """
    cls = type(world)
    ident: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    for name in ("seed", "version", "fingerprint"):
        value = getattr(world, name, None)
        if value is not None:
            ident[name] = value if isinstance(value, int | float | str | bool) else repr(value)
    prompts = list(world.sample_prompts(_PROBE_SIZE, seed=_PROBE_SEED, region="train"))
    responses = list(world.sample_responses(prompts, seed=_PROBE_SEED, region="train"))
    blob = json.dumps([prompts, responses], ensure_ascii=False).encode("utf-8")
    ident["texts"] = hashlib.sha256(blob).hexdigest()[:16]
    return ident


def _set_generation_config(model, tokenizer, max_new_tokens: int) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,  # plain ancestral sampling: no truncation of the distribution
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _sample_pairs(world, n: int, seed: int, wide_fraction: float) -> tuple[list[str], list[str]]:
    """``n`` (prompt, response) pairs: ``round(wide_fraction·n)`` from "wide", the rest "train"."""
    n_wide = round(wide_fraction * n)
    prompts, responses = [], []
    for region, count in (("wide", n_wide), ("train", n - n_wide)):
        if count:
            p = list(world.sample_prompts(count, seed=seed, region=region))
            prompts += p
            responses += list(world.sample_responses(p, seed=seed + 1, region=region))
    return prompts, responses


def _train(world, config: PolicyConfig, progress: bool | None):
    prompts, responses = _sample_pairs(world, config.n_train, config.seed, config.wide_fraction)
    held = ([], [])
    if config.n_eval:
        held = _sample_pairs(world, config.n_eval, config.seed + 2, config.wide_fraction)
    model, tokenizer, stats = train_policy(
        prompts,
        responses,
        config=config,
        eval_prompts=held[0],
        eval_responses=held[1],
        progress=progress,
    )
    room = config.n_positions - stats.max_prompt_tokens
    max_new = max(1, min(room, math.ceil(_LENGTH_SLACK * stats.max_response_tokens)))
    _set_generation_config(model, tokenizer, max_new)
    return model, tokenizer, stats, max_new


def load_or_train_policy(
    world,
    *,
    config: PolicyConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    rebuild: bool = False,
):
    """The reference policy of ``world`` from the cache, training and caching it if needed.

    Parameters
    ----------
    world : auq.testbed.world.World
        Anything with ``sample_prompts(n, *, seed, region)`` and
        ``sample_responses(prompts, *, seed, region)``; the train region is used.
    config : PolicyConfig, optional
        Sizes and schedule (default :class:`PolicyConfig`).
    cache_dir : str or PathLike, optional
        Cache root instead of ``$AUQ_CACHE_DIR`` / ``$XDG_CACHE_HOME/auq`` / ``~/.cache/auq``.
    progress : bool or None
        Training progress bar (None: only on a terminal or in a notebook).
    rebuild : bool
        Retrain even if a sound cached policy exists (and replace it).

    Returns
    -------
    model : transformers.GPT2LMHeadModel
        In eval mode on the CPU; ``generation_config`` samples at temperature 1 with no
        top-k / top-p truncation, up to ``record.max_new_tokens`` tokens.
    tokenizer : transformers.PreTrainedTokenizerFast
        Word-level, left padding, ``<bos>`` prepended.
    record : PolicyRecord
    """
    config = config or PolicyConfig()
    if not isinstance(config, PolicyConfig):
        raise TypeError(f"config must be a PolicyConfig, got {type(config).__name__}")
    ident = world_identity(world)
    key = policy_key(ident, config.to_dict())
    path = policy_dir(key, cache_dir)
    if path.exists() and not rebuild:
        try:
            model, tokenizer, saved = read_policy(path, key=key)
            saved.pop("files", None)
            record = PolicyRecord(**saved, path=str(path), trained=False)
            logger.info(
                "reference policy loaded from %s (final loss %.3f)", path, record.final_loss
            )
            return model, tokenizer, record
        except (CheckpointError, TypeError) as err:
            reason = " ".join(str(err).split())
            warn_user(f"reference policy cache {path} is damaged, rebuilding it: {reason}")
    model, tokenizer, stats, max_new = _train(world, config, progress)
    record = PolicyRecord(
        key=key,
        path=str(path),
        trained=True,
        config=config.to_dict(),
        world=ident,
        initial_loss=stats.initial_loss,
        final_loss=stats.final_loss,
        eval_loss=stats.eval_loss,
        train_seconds=stats.train_seconds,
        n_examples=stats.n_examples,
        n_dropped=stats.n_dropped,
        max_new_tokens=max_new,
        vocab_size=len(tokenizer),
        losses=stats.losses,
    )
    publish_policy(path, model, tokenizer, record.to_json(), replace=rebuild)
    logger.info("reference policy trained and cached at %s", Path(path))
    return model, tokenizer, record


def reference_policy(
    world,
    *,
    config: PolicyConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    rebuild: bool = False,
):
    """The reference policy of ``world``: ``(model, tokenizer)``, cached after the first call.

    See :func:`load_or_train_policy` for the options; it also returns the training record
    (losses, time, cache folder), which this function logs to the ``auq.testbed`` logger.

    Examples
    --------
    >>> model, tok = reference_policy(World(seed=0))  # doctest: +SKIP
    >>> from auq.training import HFGenerator  # sampling lives with best-of-n
    >>> HFGenerator(model, tok, num_threads=1).generate(["..."], 4, seed=0)  # doctest: +SKIP
    """
    model, tokenizer, record = load_or_train_policy(
        world, config=config, cache_dir=cache_dir, progress=progress, rebuild=rebuild
    )
    logger.info(
        "reference policy %s: final loss %.3f (initial %.3f, held-out %s), %s",
        record.key,
        record.final_loss,
        record.initial_loss,
        "n/a" if record.eval_loss is None else f"{record.eval_loss:.3f}",
        "trained now" if record.trained else "from cache",
    )
    return model, tokenizer
