"""The one training loop: everything in auq that trains a network runs through it.

Reward-model heads and fine-tuned backbones, backbone-level ensembles, the
testbed's reference policy, and offline and online DPO all hand this loop a
*step* — ``step(batch) -> StepResult`` (a scalar loss and metrics) — and a *data
position* — ``batch_at(i)``, micro-batch ``i`` of the run. The loop supplies the
rest, on `accelerate <https://huggingface.co/docs/accelerate>`_:

* one process by default; the same code under ``accelerate launch`` or ``torchrun``
  runs data-parallel (DDP; NCCL on GPUs, gloo on CPUs): each process takes its
  contiguous share of every micro-batch and the gradients are averaged so that the
  update equals one process's on the whole micro-batch;
* gradient accumulation, gradient clipping, AdamW with linear warm-up, mixed
  precision (bf16/fp16 autocast), gradient checkpointing of Hugging Face models;
* checkpoints (safetensors + JSON, written atomically, see
  :mod:`auq.loop.checkpoints`) and resume: a run killed and resumed ends with the
  parameters of an uninterrupted run;
* a progress bar, metrics to ``metrics.jsonl`` and TensorBoard, callbacks that can
  stop the run (early stopping).

DeepSpeed and FSDP come from accelerate's own configuration (``accelerate config``
then ``accelerate launch``); auq does not re-implement them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from auq.loop.batches import rank_slice
from auq.loop.checkpoints import latest_checkpoint, load_training_state, save_training_state
from auq.loop.config import LoopConfig
from auq.loop.tracking import MetricsWriter
from auq.utils.console import get_logger, progress_bar
from auq.utils.seeding import seeded

__all__ = ["LoopResult", "StepResult", "TrainingLoop"]

logger = get_logger("auq.loop")


class StepResult(NamedTuple):
    """What a step returns for one micro-batch (this process's share of it).

    Attributes
    ----------
    loss : Tensor, shape ()
        Mean loss over the share's items; the loop backpropagates it.
    metrics : dict of str to float or Tensor
        Numbers to log (averaged over the update's micro-batches and the processes).
    """

    loss: Tensor
    metrics: dict[str, Any] | None = None


@dataclass
class LoopResult:
    """What a run did.

    Attributes
    ----------
    n_steps : int
        Updates taken (including those before a resume).
    history : list of dict
        The logged metrics of every ``logging_steps``-th update (this run's part).
    stopped_early : bool
        A callback ended the run before ``max_steps``.
    resumed_from : Path or None
    last_checkpoint : Path or None
    train_seconds : float
    """

    n_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: Path | None = None
    last_checkpoint: Path | None = None
    train_seconds: float = 0.0


class _StepModule(nn.Module):
    """The trained module with the step as its forward, so DDP and autocast wrap the step."""

    def __init__(self, module: nn.Module, step: Callable[[Any], StepResult]):
        super().__init__()
        self.module, self.step = module, step
        self.last_metrics: dict[str, Any] = {}

    def forward(self, batch: Any) -> Tensor:
        if not len(batch):  # a micro-batch smaller than the process count: no items here,
            # but DDP still needs this process's (zero) gradients through its forward
            self.last_metrics = {}
            return sum(p.sum() for p in self.module.parameters() if p.requires_grad) * 0.0
        out = self.step(batch)
        if not isinstance(out, StepResult):
            raise TypeError(f"a training step must return a StepResult, got {type(out).__name__}")
        self.last_metrics = out.metrics or {}
        return out.loss


def _accelerator(config: LoopConfig):
    """An ``accelerate.Accelerator`` for ``config``.

    accelerate keeps one process-wide state; a notebook that trains a reward model
    (no mixed precision) and then a policy in bf16 would be refused, so a state of a
    different precision or device is reset first (the process group is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and (
        shared.get("_mixed_precision") != config.mixed_precision
        or (config.cpu and getattr(shared.get("device"), "type", "cpu") != "cpu")
    ):
        AcceleratorState._reset_state(reset_partial_state=False)
    cpu = config.cpu or not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and cpu:
        raise ValueError(
            "mixed_precision='fp16' needs a GPU; on the CPU use 'bf16' or 'no' "
            "(valid: 'no', 'fp16', 'bf16')"
        )
    return Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )


def _enable_gradient_checkpointing(module: nn.Module) -> int:
    """Turn it on in every outermost Hugging Face model under ``module``; how many."""
    count, done = 0, set()
    for name, sub in module.named_modules():
        if any(name.startswith(f"{d}.") for d in done):
            continue
        if getattr(sub, "supports_gradient_checkpointing", False):
            kwargs = {"use_reentrant": False}
            if hasattr(sub, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                sub.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                sub.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            if hasattr(sub, "config"):
                sub.config.use_cache = False
            count += 1
            done.add(name)
    return count


class TrainingLoop:
    """Train ``module`` by minimising ``step``'s loss over the micro-batches ``batch_at(i)``.

    Parameters
    ----------
    module : nn.Module
        Owns every trained parameter (and the buffers a checkpoint must keep).
    step : callable
        ``step(share) -> StepResult`` on this process's share of a micro-batch;
        called inside the (DDP-wrapped, autocast) forward.
    config : LoopConfig
    param_groups : list of dict, optional
        AdamW parameter groups (default: one group of the parameters that require
        gradients).
    description : str
        Progress-bar label.
    callbacks : sequence of callable
        ``callback(step, metrics) -> bool | None`` after each update (``metrics`` are
        this process's averages over the update); True stops the run. A callback
        must decide the same on every process.
    state : (get, set), optional
        The caller's resumable state: ``get() -> dict`` (JSON values and tensors) is
        saved in each checkpoint and ``set(dict)`` restores it on resume.

    Examples
    --------
    >>> loop = TrainingLoop(model, step, config=LoopConfig(max_steps=100, lr=1e-3))
    >>> result = loop.run(EpochBatches(len(data), 32, seed=0))  # doctest: +SKIP
    """

    def __init__(
        self,
        module: nn.Module,
        step: Callable[[Any], StepResult],
        *,
        config: LoopConfig,
        param_groups: list[dict] | None = None,
        description: str = "train",
        callbacks: Sequence[Callable[[int, dict], bool | None]] = (),
        state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
    ):
        if not isinstance(config, LoopConfig):
            raise TypeError(f"config must be a LoopConfig, got {type(config).__name__}")
        self.module, self.step, self.config = module, step, config
        self.description, self.callbacks, self.state = description, list(callbacks), state
        if param_groups is None:
            param_groups = [{"params": [p for p in module.parameters() if p.requires_grad]}]
        if not any(group["params"] for group in param_groups):
            raise ValueError(f"{description}: nothing to train (no parameter requires gradients)")
        self.param_groups = param_groups
        self.accelerator = _accelerator(config)

    @property
    def device(self) -> torch.device:
        """Where the module trains."""
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    def run(self, batch_at: Callable[[int], Any]) -> LoopResult:
        """Take ``config.max_steps`` updates (fewer when a callback stops the run).

        Parameters
        ----------
        batch_at : callable
            ``batch_at(i)`` is micro-batch ``i`` of the run (a sized sequence or a
            tensor of items); it must depend on ``i`` (and fixed seeds) only, so that
            a resumed run sees what an uninterrupted one saw.

        Returns
        -------
        LoopResult
        """
        config, acc = self.config, self.accelerator
        with seeded(config.seed + self.rank, self.device):
            return self._run(batch_at, config, acc)

    def _run(self, batch_at: Callable[[int], Any], config: LoopConfig, acc) -> LoopResult:
        if config.gradient_checkpointing:
            _enable_gradient_checkpointing(self.module)
        optimizer = torch.optim.AdamW(
            self.param_groups,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=tuple(config.adam_betas),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
        wrapper = _StepModule(self.module, self.step)
        model, optimizer = acc.prepare(wrapper, optimizer)
        params = [p for group in self.param_groups for p in group["params"]]
        result = LoopResult()
        start = self._resume(optimizer, scheduler, result)
        writer = MetricsWriter(config.output_dir, config.report_to, start_step=start)
        accum = config.gradient_accumulation_steps
        bar = progress_bar(
            total=config.max_steps,
            initial=start,
            desc=self.description,
            enabled=config.progress if acc.is_main_process else False,
        )
        began = time.perf_counter()
        step = start
        try:
            model.train()
            while step < config.max_steps:
                tick = time.perf_counter()
                sums: dict[str, float] = {"loss": 0.0}
                grad_norm = None
                for a in range(accum):
                    batch = batch_at(step * accum + a)
                    n = len(batch)
                    share = batch[rank_slice(n, self.rank, self.world_size)]
                    wrapper.last_metrics = {}
                    with acc.accumulate(model):
                        # each process's mean weighs by its share: DDP's average of the
                        # gradients (and _reduce's of the losses) is the micro-batch's mean
                        loss = model(share) * (len(share) * self.world_size / n)
                        sums["loss"] += float(loss.detach())
                        acc.backward(loss)
                        if acc.sync_gradients and config.max_grad_norm is not None:
                            grad_norm = float(acc.clip_grad_norm_(params, config.max_grad_norm))
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    for key, value in wrapper.last_metrics.items():
                        sums[key] = sums.get(key, 0.0) + float(value)
                metrics = {k: v / accum for k, v in sums.items()}
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                metrics["lr"] = scheduler.get_last_lr()[0]  # the rate this update used
                scheduler.step()
                step += 1
                metrics["step_seconds"] = time.perf_counter() - tick
                logged_now = step % config.logging_steps == 0 or step == config.max_steps
                if logged_now:
                    self._log(step, metrics, result, writer, bar)
                bar.update(1)
                stop = any(bool(cb(step, metrics)) for cb in self.callbacks)
                if stop and not logged_now:  # the last update of a stopped run is logged too
                    self._log(step, metrics, result, writer, bar)
                last = stop or step == config.max_steps
                if config.save_steps and (step % config.save_steps == 0 or last):
                    result.last_checkpoint = self._save(step, optimizer, scheduler)
                if stop:
                    result.stopped_early = True
                    break
        finally:
            bar.close()
            writer.close()
            model.eval()
        result.n_steps = step
        result.train_seconds = time.perf_counter() - began
        if self.device.type != "cpu":  # accelerate drops its references and empties the cache
            acc.free_memory()
        return result

    def _log(self, step: int, metrics: dict, result: LoopResult, writer, bar) -> None:
        logged = self._reduce(metrics)
        result.history.append({"step": step, **logged})
        if self.accelerator.is_main_process:
            writer.write(step, logged)
        bar.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric's mean over the processes that report it (every process calls this;
        a process whose share was empty reports fewer metrics)."""
        if self.world_size == 1:
            return metrics
        import torch.distributed as dist

        gathered: list[dict[str, float]] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(gathered, metrics)
        keys = sorted({k for part in gathered for k in part})
        return {
            k: sum(p[k] for p in gathered if k in p) / sum(k in p for p in gathered) for k in keys
        }

    def _trainer_state(self, step: int) -> dict[str, Any]:
        return {
            "micro_step": step * self.config.gradient_accumulation_steps,
            "max_steps": self.config.max_steps,
            "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
            "seed": self.config.seed,
            "description": self.description,
        }

    def _save(self, step: int, optimizer, scheduler) -> Path:
        path = save_training_state(
            self.config.output_dir,
            step,
            module=self.module,
            optimizer=optimizer,
            scheduler=scheduler,
            trainer_state=self._trainer_state(step),
            caller_state=self.state[0]() if self.state is not None else {},
            rank=self.rank,
            world_size=self.world_size,
            barrier=self.accelerator.wait_for_everyone,
            save_total_limit=self.config.save_total_limit,
        )
        if self.accelerator.is_main_process:
            logger.info("%s: checkpoint %s", self.description, path)
        return path

    def _resume(self, optimizer, scheduler, result: LoopResult) -> int:
        """Load the checkpoint ``resume_from_checkpoint`` names; the update to start from."""
        wanted = self.config.resume_from_checkpoint
        if wanted in (None, False):
            return 0
        if wanted is True:
            path = latest_checkpoint(self.config.output_dir)
            if path is None:
                logger.info(
                    "%s: no checkpoint in %s; starting afresh",
                    self.description,
                    self.config.output_dir,
                )
                return 0
        else:
            path = Path(wanted)
        state, caller = load_training_state(
            path,
            module=self.module,
            optimizer=optimizer,
            scheduler=scheduler,
            rank=self.rank,
            world_size=self.world_size,
            expect={
                "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
                "seed": self.config.seed,
            },
        )
        decays = self.config.lr_scheduler_type != "constant"
        if decays and state.get("max_steps") != self.config.max_steps:
            logger.warning(
                "%s: %s was written by a run of max_steps=%s, resumed with max_steps=%s; "
                "a decaying learning rate follows the new length from here on",
                self.description,
                path,
                state.get("max_steps"),
                self.config.max_steps,
            )
        if self.state is not None:
            self.state[1](caller)
        result.resumed_from = path
        if self.accelerator.is_main_process:
            logger.info("%s: resumed from %s (update %d)", self.description, path, state["step"])
        return int(state["step"])
