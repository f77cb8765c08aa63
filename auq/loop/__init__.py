"""The one training loop (on accelerate), its checkpoints and its metric sinks.

* :class:`TrainingLoop` / :class:`LoopConfig` / :class:`StepResult` — the loop;
* :class:`EpochBatches` — shuffled minibatches addressed by position (resumable);
* :func:`latest_checkpoint` — the newest complete checkpoint of a run.

See :mod:`auq.loop.loop` for what the loop does and :mod:`auq.loop.checkpoints`
for the checkpoint layout.
"""

from auq.loop.batches import EpochBatches, rank_slice
from auq.loop.checkpoints import latest_checkpoint
from auq.loop.config import LOOP_OPTIONS, LoopConfig
from auq.loop.loop import LoopResult, StepResult, TrainingLoop

__all__ = [
    "LOOP_OPTIONS",
    "EpochBatches",
    "LoopConfig",
    "LoopResult",
    "StepResult",
    "TrainingLoop",
    "latest_checkpoint",
    "rank_slice",
]
