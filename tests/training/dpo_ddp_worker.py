"""Train a tiny DPO policy for a few updates; rank 0 writes its weights to ARGV[1].

Run as ``python dpo_ddp_worker.py OUT`` (one process) or under ``torchrun
--nproc_per_node 2`` (DDP over gloo): the two must end with the same weights.
A batch of 7 pairs makes the two processes' shares unequal (4 and 3).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dpo_setup import rows, tiny_policy, word_pairs_and_tokenizer
from safetensors.torch import save_file

from auq.training import DPOConfig, DPOTrainer


def main(out: str) -> None:
    _, train, _, tok = word_pairs_and_tokenizer()
    trainer = DPOTrainer(
        tiny_policy(tok),
        tokenizer=tok,
        train_dataset=rows(train),
        args=DPOConfig(lr=1e-3, batch_size=7, max_steps=3, progress=False, cpu=True),
    )
    trainer.train()
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        state = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters()}
        save_file(state, out)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
