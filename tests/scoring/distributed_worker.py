"""Run by ``torchrun`` in test_distributed.py: score with ``distributed=True``; rank 0 saves.

The group is joined first, as training scripts do, and left at the end: nothing may keep
it alive (its gloo workers would free tensors during interpreter shutdown and abort).
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import save_file

from auq.models.reward_model import RewardModel
from auq.scoring.distributed import distributed_env, init_distributed


def main(model_dir: str, texts_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    init_distributed()
    texts = json.loads(open(texts_path).read())
    rm = RewardModel.from_pretrained(model_dir)
    rp = rm.score(texts["prompts"], texts["responses"], distributed=True, max_tokens=64)
    rank, world, _ = distributed_env()
    stats = rm.last_scoring_stats
    assert world == 2 and 0 < stats.n_items < len(texts["prompts"]), stats
    if rank == 0:
        save_file({"samples": rp.samples.contiguous(), "mean": rp.mean}, out_path)
    torch.distributed.destroy_process_group()
    if os.path.isdir("/proc/self/task"):  # Linux: the group's worker threads are gone
        names = [
            open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")
        ]
        assert not any(n.startswith(("pt_gloo", "gloo")) for n in names), names


if __name__ == "__main__":
    main(*sys.argv[1:4])
