"""Run by ``torchrun`` in test_distributed.py: score with ``distributed=True``; rank 0 saves."""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import save_file

from auq.models.reward_model import RewardModel
from auq.scoring.distributed import distributed_env


def main(model_dir: str, texts_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    texts = json.loads(open(texts_path).read())
    rm = RewardModel.from_pretrained(model_dir)
    rp = rm.score(texts["prompts"], texts["responses"], distributed=True, max_tokens=64)
    rank, world, _ = distributed_env()
    stats = rm.last_scoring_stats
    assert world == 2 and 0 < stats.n_items < len(texts["prompts"]), stats
    if rank == 0:
        save_file({"samples": rp.samples.contiguous(), "mean": rp.mean}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
