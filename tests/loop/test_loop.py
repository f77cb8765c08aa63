"""The one training loop: accumulation, exact in-process resume, two processes, options.

Tiny MLPs on fixed random data; every comparison is between two runs of the loop (or a
hand value), so no test depends on how well a model learns. The two-process test is a
real ``torchrun`` with two CPU processes (gloo), as ``auq score``'s tests launch it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from auq.loop import EpochBatches, LoopConfig, StepResult, TrainingLoop
from auq.loop.state import capture_rng, split_tensors
from auq.utils.io import write_json
from auq.utils.seeding import seeded

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
N_ITEMS, DIM = 48, 6


def make_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(DIM, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1)]
    return nn.Sequential(*layers)


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_ITEMS, DIM, generator=g)
    return x, x @ torch.randn(DIM, generator=g) + 0.1 * torch.randn(N_ITEMS, generator=g)


def mse_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def step(idx: torch.Tensor) -> StepResult:
        out = model(x[idx]).squeeze(-1)
        return StepResult(nn.functional.mse_loss(out.float(), y[idx]), {"items": len(idx)})

    return step


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_params_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max()}"


def train(model, config: LoopConfig, batch_at, callbacks=()):
    x, y = make_data()
    return TrainingLoop(model, mse_step(model, x, y), config=config, callbacks=callbacks).run(
        batch_at
    )


QUIET = {"cpu": True, "progress": False}


# -- gradient accumulation -----------------------------------------------------------------


def test_two_accumulated_micro_batches_of_4_equal_one_batch_of_8():
    order = EpochBatches(N_ITEMS, 8, seed=0)  # the batches of 8; micro-batch i is a half
    common = {"max_steps": 5, "lr": 3e-2, "max_grad_norm": 0.5, "warmup_steps": 1, **QUIET}

    def half(i: int) -> torch.Tensor:
        update, part = divmod(i, 2)
        return order(update)[part * 4 : (part + 1) * 4]

    cut = EpochBatches(N_ITEMS, 8, seed=0, accumulation=2)  # the loop's own cutting
    assert all(torch.equal(cut(i), half(i)) for i in range(20))
    big, small = make_model(), make_model()
    one = train(big, LoopConfig(**common), order)
    two = train(small, LoopConfig(**common, gradient_accumulation_steps=2), half)
    assert one.n_steps == two.n_steps == 5
    # the clipping is active, and acts on the accumulated gradient
    assert all(h["grad_norm"] > 0.5 for h in one.history)
    for a, b in zip(one.history, two.history, strict=True):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    moved = params_of(big)
    for name, value in params_of(small).items():
        torch.testing.assert_close(value, moved[name], rtol=1e-5, atol=1e-6)
    assert not torch.equal(moved["0.weight"], make_model()[0].weight)  # it trained


# -- resume in one process -----------------------------------------------------------------

RESUMABLE = LoopConfig(
    max_steps=12,
    gradient_accumulation_steps=2,
    lr=2e-2,
    warmup_steps=2,
    lr_scheduler_type="cosine",
    seed=3,
    save_steps=4,
    report_to="none",
    output_dir="unused",
    **QUIET,
)


def test_resume_equals_an_uninterrupted_run_exactly_and_needs_the_rng(tmp_path):
    batches = EpochBatches(N_ITEMS, 8, seed=0)
    full_model = make_model(dropout=0.3)
    train(full_model, RESUMABLE.replace(output_dir=None, save_steps=None), batches)
    full = params_of(full_model)

    # 5 updates of the 12-update run (a callback stops it), then a fresh model resumes
    first = train(
        make_model(dropout=0.3),
        RESUMABLE.replace(output_dir=str(tmp_path)),
        batches,
        callbacks=[lambda step, _m: step == 5],
    )
    assert first.stopped_early and first.n_steps == 5
    assert first.last_checkpoint == tmp_path / "checkpoint-000005"  # saved on stopping
    forgot = tmp_path / "forgot"  # a copy for below (the resumed run prunes the original)
    shutil.copytree(tmp_path / "checkpoint-000005", forgot)
    resumed_model = make_model(seed=99, dropout=0.3)  # other initial weights: all restored
    second = train(
        resumed_model,
        RESUMABLE.replace(output_dir=str(tmp_path), resume_from_checkpoint=True),
        batches,
    )
    assert second.resumed_from == tmp_path / "checkpoint-000005"
    assert second.n_steps == 12 and [h["step"] for h in second.history] == list(range(6, 13))
    assert_params_equal(params_of(resumed_model), full)

    # the same checkpoint with the random state a loop that forgot it would have (the run's
    # seed, as at the start): dropout draws other masks, and the parameters differ
    with seeded(RESUMABLE.seed):
        tree, tensors = split_tensors(capture_rng())
    save_file(tensors, str(forgot / "rng-rank0.safetensors"))
    write_json(forgot / "rng-rank0.json", tree)
    other = make_model(seed=99, dropout=0.3)
    train(
        other,
        RESUMABLE.replace(output_dir=str(tmp_path / "o"), resume_from_checkpoint=str(forgot)),
        batches,
    )
    differs = max((p - full[name]).abs().max().item() for name, p in params_of(other).items())
    assert differs > 1e-4


# -- two processes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [
        "8,7,8,8,7,7,8,7",
        "8,1,8,8,7,1,8,7",  # a micro-batch of 1: one process has no share of it
    ],
    ids=["micro-batches-of-8-and-7", "a-micro-batch-of-1"],
)
def test_two_processes_under_torchrun_equal_one_process(tmp_path, sizes):
    """Each process takes its contiguous share of every micro-batch; DDP averages."""
    worker = str(Path(__file__).with_name("_ddp_worker.py"))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        worker, "--out", str(tmp_path / "two"), "--sizes", sizes,
    ]  # fmt: skip
    two = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO
    )
    try:
        one = subprocess.run(
            [sys.executable, worker, "--out", str(tmp_path / "one"), "--sizes", sizes],
            capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300,
        )  # fmt: skip
        _, stderr = two.communicate(timeout=300)
    finally:
        two.kill()
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["n_steps"] for r in ranks] == [4, 4]
    expected = [int(n) for n in sizes.split(",")]
    assert json.loads((tmp_path / "one" / "rank0.json").read_text())["shares"] == expected
    # contiguous halves, the first one larger: 8 -> 4 + 4, 7 -> 4 + 3 (an empty share
    # does not reach the step)
    assert ranks[0]["shares"] == [(n + 1) // 2 for n in expected]
    assert ranks[1]["shares"] == [n // 2 for n in expected if n // 2]
    # each process saved its own random state into the shared checkpoint
    last = tmp_path / "two" / "checkpoint-000004"
    assert {"rng-rank0.json", "rng-rank1.json"} <= {p.name for p in last.iterdir()}
    assert json.loads((last / "trainer_state.json").read_text())["world_size"] == 2
    ref = load_file(str(tmp_path / "one" / "final.safetensors"))
    got = load_file(str(tmp_path / "two" / "final.safetensors"))
    start = params_of(make_ddp_reference_start())
    assert ref.keys() == got.keys() == start.keys()
    for name in ref:
        assert not torch.equal(ref[name], start[name])  # it trained
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6)


def make_ddp_reference_start() -> nn.Module:
    """The worker's initial model (same seed and layers)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))


# -- callbacks and metrics -----------------------------------------------------------------


def test_a_callback_returning_true_stops_the_run_and_metrics_are_logged(tmp_path):
    seen: list[int] = []

    def stop_at_5(step: int, metrics: dict) -> bool:
        seen.append(step)
        assert {"loss", "items", "lr", "grad_norm", "step_seconds"} <= set(metrics)
        return step == 5

    config = LoopConfig(max_steps=20, logging_steps=2, output_dir=str(tmp_path), **QUIET)
    result = train(
        make_model(), config, EpochBatches(N_ITEMS, 8), callbacks=[lambda *_: None, stop_at_5]
    )
    assert result.stopped_early and result.n_steps == 5 and seen == [1, 2, 3, 4, 5]
    assert [h["step"] for h in result.history] == [2, 4, 5]  # the stopping update too
    assert all(h["items"] == 8 and np.isfinite(h["loss"]) for h in result.history)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert logged == result.history
    assert result.last_checkpoint is None and not list(tmp_path.glob("checkpoint-*"))


def test_no_callback_runs_to_max_steps():
    result = train(make_model(), LoopConfig(max_steps=3, **QUIET), EpochBatches(N_ITEMS, 8))
    assert not result.stopped_early and result.n_steps == 3
    assert [h["step"] for h in result.history] == [1, 2, 3]


# -- learning-rate schedules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # warm-up over 2 updates: (step + 1) / 2; then over the 8 updates 2..10
        ("constant", {0: 0.5, 1: 1.0, 2: 1.0, 6: 1.0, 9: 1.0}),
        # linear to 0.1: 0.1 + 0.9 * (1 - (step - 2) / 8)
        ("linear", {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.775, 6: 0.55, 9: 0.2125, 10: 0.1}),
        # cosine to 0.1: 0.1 + 0.9 * (1 + cos(pi * (step - 2) / 8)) / 2
        ("cosine", {0: 0.5, 2: 1.0, 4: 0.8681980515, 6: 0.55, 8: 0.2318019485, 10: 0.1}),
    ],
)
def test_lr_factor_by_hand(schedule, expected):
    config = LoopConfig(max_steps=10, warmup_steps=2, lr_scheduler_type=schedule, min_lr_ratio=0.1)
    for step, value in expected.items():
        assert config.lr_factor(step) == pytest.approx(value, abs=1e-9), step


def test_the_first_update_uses_the_warmed_up_learning_rate():
    """AdamW's first step moves every weight by lr x factor(0) (its m / sqrt(v) is ±1)."""
    model = make_model()
    before = params_of(model)
    config = LoopConfig(max_steps=1, lr=1e-2, warmup_steps=4, max_grad_norm=None, **QUIET)
    result = train(model, config, EpochBatches(N_ITEMS, 8))
    assert result.history[0]["lr"] == pytest.approx(1e-2 / 4)  # the rate the update used
    moved = (model[0].weight.detach() - before["0.weight"]).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 1e-2 / 4), rtol=1e-4, atol=1e-7)


# -- mixed precision -----------------------------------------------------------------------


def test_bf16_on_the_cpu_autocasts_the_step_and_trains():
    model, (x, y) = make_model(), make_data()
    dtypes: list[torch.dtype] = []
    inner = mse_step(model, x, y)

    def step(idx):
        dtypes.append(model(x[idx]).dtype)
        return inner(idx)

    before = params_of(model)
    config = LoopConfig(max_steps=3, mixed_precision="bf16", lr=1e-2, **QUIET)
    result = TrainingLoop(model, step, config=config).run(EpochBatches(N_ITEMS, 8))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(np.isfinite(h["loss"]) for h in result.history)
    for name, value in params_of(model).items():
        assert value.dtype == torch.float32 and not torch.equal(value, before[name]), name


def test_fp16_on_the_cpu_is_refused():
    config = LoopConfig(max_steps=1, mixed_precision="fp16", **QUIET)
    with pytest.raises(ValueError, match=r"mixed_precision='fp16' needs a GPU.*'bf16'"):
        TrainingLoop(make_model(), lambda b: None, config=config)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed"
)
def test_tensorboard_without_the_package_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"report_to='tensorboard' needs the tensorboard package"):
        LoopConfig(max_steps=1, report_to="tensorboard", output_dir=str(tmp_path), **QUIET)
    with pytest.raises(ValueError, match=r"report_to='jsonl' writes into output_dir"):
        LoopConfig(max_steps=1, report_to="jsonl", **QUIET)


# -- bad options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_steps": 0}, "max_steps must be a positive integer, got 0"),
        ({"max_steps": True}, "max_steps must be a positive integer, got True"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be a positive"),
        ({"logging_steps": 2.0}, "logging_steps must be a positive integer, got 2.0"),
        ({"save_steps": 0}, r"save_steps must be a positive integer or None, got 0"),
        ({"save_total_limit": -1}, r"save_total_limit must be a positive integer or None"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1"),
        ({"warmup_steps": 1.5}, "warmup_steps must be an integer >= 0, got 1.5"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
        ({"max_grad_norm": 0}, "max_grad_norm must be > 0 or None, got 0"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\], got 1.5"),
        ({"adam_betas": (0.9,)}, r"adam_betas must be two numbers in \[0, 1\), got \(0.9,\)"),
        ({"adam_betas": (0.9, 1.0)}, r"adam_betas must be two numbers in \[0, 1\)"),
        (
            {"mixed_precision": "fp8"},
            "mixed_precision='fp8' is not supported; valid choices: 'no', 'fp16', 'bf16'",
        ),
        (
            {"lr_scheduler_type": "step"},
            "lr_scheduler_type='step' is not supported; valid choices: 'constant', 'linear', "
            "'cosine'",
        ),
        (
            {"report_to": "wandb"},
            "report_to='wandb' is not supported; valid choices: 'auto', 'jsonl', "
            "'tensorboard', 'none'",
        ),
        ({"save_steps": 5}, r"save_steps needs output_dir"),
        ({"resume_from_checkpoint": True}, r"resume_from_checkpoint=True .* set output_dir"),
    ],
)
def test_bad_loop_options_name_the_option(changes, message):
    with pytest.raises(ValueError, match=message):
        LoopConfig(**changes)


def test_unknown_option_and_bad_arguments():
    with pytest.raises(TypeError, match=r"unknown loop option\(s\) lrr; valid: max_steps, "):
        LoopConfig().replace(lrr=1.0)
    with pytest.raises(TypeError, match="config must be a LoopConfig, got dict"):
        TrainingLoop(make_model(), lambda b: None, config={"max_steps": 1})
    frozen = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="policy: nothing to train"):
        TrainingLoop(frozen, lambda b: None, config=LoopConfig(**QUIET), description="policy")
    model = make_model()
    loop = TrainingLoop(
        model, lambda idx: model(idx).sum(), config=LoopConfig(max_steps=1, **QUIET)
    )
    with pytest.raises(TypeError, match="a training step must return a StepResult, got Tensor"):
        loop.run(lambda i: torch.randn(4, DIM))
