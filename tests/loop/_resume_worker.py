"""A small training run for the killed-process resume test (tests/loop/test_checkpoints.py).

Trains a tiny MLP with dropout (so the restored RNG matters) on fixed data through
:class:`auq.loop.TrainingLoop`, checkpointing every 2 updates into ``--out``. It can kill
itself with SIGKILL:

* ``--kill-after STEP``: right after update STEP (a callback), between checkpoints;
* ``--kill-while-saving STEP``: in the middle of writing checkpoint STEP (its files are
  partly written into the temporary folder, which is never renamed into place).

At the end it writes the trained parameters and its caller state to ``--final``
(safetensors) and prints one line with the update it resumed from.

    python tests/loop/_resume_worker.py --out DIR --final FILE [--resume] [--kill-after 5]
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import auq.loop.checkpoints as checkpoints
from auq.loop import EpochBatches, LoopConfig, StepResult, TrainingLoop

N_ITEMS, DIM = 48, 6


def model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_ITEMS, DIM, generator=g)
    y = x @ torch.randn(DIM, generator=g) + 0.1 * torch.randn(N_ITEMS, generator=g)
    return model, x, y


def kill_while_saving(step: int) -> None:
    """SIGKILL this process when checkpoint ``step`` writes its trainer state (its last file)."""
    write_json = checkpoints.write_json

    def dying_write_json(path, value, *args, **kwargs):
        path = Path(path)
        if path.name == "trainer_state.json" and path.parent.name == f".checkpoint-{step:06d}.tmp":
            os.kill(os.getpid(), signal.SIGKILL)
        return write_json(path, value, *args, **kwargs)

    checkpoints.write_json = dying_write_json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--final", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after", type=int)
    parser.add_argument("--kill-while-saving", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, x, y = model_and_data()
    batches = EpochBatches(N_ITEMS, 8, seed=0)  # 6 micro-batches an epoch, 2 an update
    seen = {"items": 0, "loss_sum": torch.zeros(())}  # the caller's resumable state

    def step(idx: torch.Tensor) -> StepResult:
        loss = nn.functional.mse_loss(model(x[idx]).squeeze(-1), y[idx])
        seen["items"] += len(idx)
        seen["loss_sum"] = seen["loss_sum"] + loss.detach()
        return StepResult(loss, {"items": len(idx)})

    def get_state() -> dict:
        return dict(seen)

    def set_state(state: dict) -> None:
        seen.update(state)

    def kill_after(update: int, _metrics: dict) -> None:
        if update == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    if args.kill_while_saving is not None:
        kill_while_saving(args.kill_while_saving)
    config = LoopConfig(
        max_steps=args.steps,
        gradient_accumulation_steps=2,
        lr=2e-2,
        warmup_steps=2,
        lr_scheduler_type="cosine",
        seed=3,
        output_dir=args.out,
        save_steps=2,
        save_total_limit=2,
        resume_from_checkpoint=True if args.resume else None,
        report_to="jsonl",
        cpu=True,
        progress=False,
    )
    loop = TrainingLoop(
        model, step, config=config, callbacks=[kill_after], state=(get_state, set_state)
    )
    result = loop.run(batches)
    final = {name: p.detach().clone() for name, p in model.named_parameters()}
    final["caller.items"] = torch.tensor(seen["items"])
    final["caller.loss_sum"] = seen["loss_sum"]
    save_file(final, args.final)
    resumed = result.resumed_from.name if result.resumed_from else None
    print(f"done: {result.n_steps} updates, resumed from {resumed}", flush=True)


if __name__ == "__main__":
    main()
