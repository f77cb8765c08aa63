"""A small data-parallel run for tests/loop/test_loop.py, under torchrun or alone.

A tiny MLP without dropout (each process draws its own dropout masks, so only a
deterministic model can match one process) takes 4 updates of 2 accumulated
micro-batches of 8 or 7 items (an odd size, so the two processes' shares differ; ``--sizes``
sets others), with
checkpoints every 2 updates into ``--out``. Rank 0 then writes the final parameters to
``--out/final.safetensors``.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/loop/_ddp_worker.py --out DIR      # two processes (gloo on the CPU)
    python tests/loop/_ddp_worker.py --out DIR   # one process, the reference
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from auq.loop import LoopConfig, StepResult, TrainingLoop

#: micro-batch sizes of the run (4 updates x 2 micro-batches); --sizes replaces them
SIZES = "8,7,8,8,7,7,8,7"
DIM = 5


def model_and_data(n_items: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_items, DIM, generator=g)
    y = x @ torch.randn(DIM, generator=g) + 0.1 * torch.randn(n_items, generator=g)
    return model, x, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", default=SIZES, help="micro-batch sizes, comma-separated")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(1)
    model, x, y = model_and_data(sum(sizes))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    shares: list[int] = []

    def batch_at(i: int) -> torch.Tensor:
        return torch.arange(starts[i], starts[i] + sizes[i])

    def step(idx: torch.Tensor) -> StepResult:
        shares.append(len(idx))
        return StepResult(nn.functional.mse_loss(model(x[idx]).squeeze(-1), y[idx]))

    config = LoopConfig(
        max_steps=len(sizes) // 2,
        gradient_accumulation_steps=2,
        lr=5e-2,
        max_grad_norm=None,  # the gradient itself is compared, not its clipped direction
        output_dir=args.out,
        save_steps=2,
        report_to="jsonl",
        cpu=True,
        progress=False,
    )
    loop = TrainingLoop(model, step, config=config)
    result = loop.run(batch_at)
    if loop.rank == 0:
        final = {name: p.detach().clone() for name, p in model.named_parameters()}
        save_file(final, str(Path(args.out) / "final.safetensors"))
    record = {"rank": loop.rank, "world_size": loop.world_size, "shares": shares}
    record["n_steps"] = result.n_steps
    (Path(args.out) / f"rank{loop.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
