"""Tiny DPO set-ups shared by the trainer tests: a testbed world, a word-level tokenizer,
a 2-layer GPT-2 policy built from a config, and an auq reward model on a tiny GPT-2."""

from __future__ import annotations

from pathlib import Path

import torch

from auq.testbed import World
from auq.testbed.tokenizer import build_tokenizer

N_TRAIN, N_HELD = 64, 32


def world_pairs():
    world = World()
    return (
        world,
        world.preference_dataset(N_TRAIN, seed=0),
        world.preference_dataset(N_HELD, seed=1),
    )


def rows(dataset) -> list[dict]:
    return [
        {"prompt": p, "chosen": c, "rejected": r}
        for p, c, r in zip(dataset.prompts, dataset.chosen, dataset.rejected, strict=True)
    ]


def word_tokenizer(world, *datasets):
    texts = [t for d in datasets for t in (*d.prompts, *d.chosen, *d.rejected)]
    texts += world.sample_prompts(64, seed=9)
    return build_tokenizer(texts, model_max_length=128)


def gpt2_config(tokenizer):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_policy(tokenizer, seed: int = 0):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(tokenizer))


def save_backbone(tokenizer, path: Path) -> Path:
    from transformers import GPT2Model

    torch.manual_seed(1)
    GPT2Model(gpt2_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def word_pairs_and_tokenizer():
    """(world, train pairs, held-out pairs, word-level tokenizer)."""
    world, train, held = world_pairs()
    return world, train, held, word_tokenizer(world, train, held)


def fitted_reward_model(backbone_dir: Path, train, uq: str = "heads"):
    import auq

    extra = {"n_members": 4} if uq == "heads" else {}
    rm = auq.RewardModel.from_backbone(str(backbone_dir), uq=uq, max_length=128, **extra)
    return (
        rm.fit(train, epochs=5, progress=False) if uq == "heads" else rm.fit(train, progress=False)
    )
