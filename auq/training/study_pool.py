"""The best-of-n pool of an over-optimisation study: drawn once per seed, gold-scored once.

:func:`draw_pool` loads (or trains and caches) the world's reference policy, samples
``pool_size`` responses to each of ``n_prompts`` prompts of the world's ``"train"``
region through :class:`~auq.training.HFGenerator`, and reads the gold reward and the
attributes the study reports (sentences, stock phrases) off the texts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from auq.testbed import World
from auq.testbed.policy import load_or_train_policy
from auq.training.generation import HFGenerator
from auq.training.study_config import StudyConfig
from auq.utils.console import get_logger

__all__ = ["Pool", "draw_pool"]

logger = get_logger("auq.training")

#: seed of the pool's prompts (the world's own seed varies per study seed)
_PROMPT_SEED = 4
#: sequences per generate call when sampling the pool
_GENERATE_ROWS = 512


@dataclass
class Pool:
    """P prompts with N sampled responses each, and what the world says of them.

    Attributes
    ----------
    prompts : list of str, length P
    responses : list of P lists of N str
    gold, sentences, stock : ndarray, shape (P, N)
        Gold reward, sentence count, stock-phrase count of each response.
    stats : dict
        Sampling counts and times (strict JSON).
    """

    prompts: list[str]
    responses: list[list[str]]
    gold: np.ndarray
    sentences: np.ndarray
    stock: np.ndarray
    stats: dict[str, Any]

    def flat(self) -> tuple[list[str], list[str]]:
        """Prompts and responses of the P·N rows, prompt-major."""
        n = len(self.responses[0])
        return [p for p in self.prompts for _ in range(n)], [
            r for row in self.responses for r in row
        ]


def draw_pool(world: World, config: StudyConfig) -> Pool:
    """Sample the study's pool from the world's reference policy (trained and cached if needed)."""
    start = time.perf_counter()
    model, tokenizer, record = load_or_train_policy(
        world,
        config=config.resolved_policy_config,
        cache_dir=config.cache_dir,
        progress=config.progress,
    )
    policy_seconds = time.perf_counter() - start
    max_new = config.max_new_tokens or int(model.generation_config.max_new_tokens)
    generator = HFGenerator(
        model,
        tokenizer,
        max_new_tokens=max_new,
        batch_size=max(1, _GENERATE_ROWS // config.pool_size),
        progress=config.progress,
    )
    prompts = world.sample_prompts(config.n_prompts, seed=_PROMPT_SEED, region="train")
    start = time.perf_counter()
    responses = generator.generate(prompts, config.pool_size, seed=world.seed)
    sample_seconds = time.perf_counter() - start
    flat_p = [p for p in prompts for _ in range(config.pool_size)]
    flat_r = [r for row in responses for r in row]
    shape = (config.n_prompts, config.pool_size)
    gold = world.gold_reward(flat_p, flat_r).reshape(shape)
    attrs = world.attributes(flat_p, flat_r)
    sentences = attrs["n_sentences"].reshape(shape).astype(np.float64)
    stock = attrs["stock"].reshape(shape).astype(np.float64)
    distinct = [len(set(row)) for row in responses]
    stats = {
        "seed": world.seed,
        "n_prompts": config.n_prompts,
        "pool_size": config.pool_size,
        "max_new_tokens": max_new,
        "n_truncated": generator.last_stats.n_truncated if generator.last_stats else None,
        "distinct_fraction": float(np.mean(distinct) / config.pool_size),
        "gold_mean": float(gold.mean()),
        "gold_std": float(gold.std()),
        "sentences_mean": float(sentences.mean()),
        "share_over_4_sentences": float((sentences > 4).mean()),
        "policy_key": record.key,
        "policy_trained_now": record.trained,
        "policy_train_seconds": record.train_seconds,
        "policy_final_loss": record.final_loss,
        "policy_eval_loss": record.eval_loss,
        "policy_load_or_train_seconds": policy_seconds,
        "sample_seconds": sample_seconds,
    }
    logger.info(
        "pool of seed %d: %d x %d responses in %.1f s, %.1f sentences on average, gold %.3f",
        world.seed, *shape, sample_seconds, stats["sentences_mean"], stats["gold_mean"],
    )  # fmt: skip
    return Pool(prompts, responses, gold, sentences, stock, stats)
