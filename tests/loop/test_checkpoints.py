"""Checkpoints of the one training loop: safetensors + JSON only, pruning, refusals, and a
real process killed with SIGKILL (between checkpoints, and while writing one) that resumes
to the parameters of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from auq.loop import EpochBatches, LoopConfig, StepResult, TrainingLoop, latest_checkpoint
from auq.loop.checkpoints import checkpoint_dirs
from auq.loop.state import capture_rng, join_tensors, restore_rng, split_tensors
from auq.utils.io import CheckpointError

REPO = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("_resume_worker.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
N_ITEMS, DIM = 32, 4
#: what every checkpoint holds (one process)
FILES = {
    "weights.safetensors",
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.json",
    "rng-rank0.safetensors",
    "rng-rank0.json",
    "trainer_state.json",
    "caller.safetensors",
    "caller.json",
}


def make_model(seed: int = 0, hidden: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, hidden), nn.Tanh(), nn.Dropout(0.2), nn.Linear(hidden, 1))


def run(model: nn.Module, config: LoopConfig, state=None):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N_ITEMS, DIM, generator=g), torch.randn(N_ITEMS, generator=g)

    def step(idx):
        return StepResult(nn.functional.mse_loss(model(x[idx]).squeeze(-1), y[idx]))

    loop = TrainingLoop(model, step, config=config, state=state)
    return loop.run(EpochBatches(N_ITEMS, 8, seed=0))


def saving(tmp_path: Path, **changes) -> LoopConfig:
    options = {"max_steps": 4, "save_steps": 2, "output_dir": str(tmp_path), "lr": 1e-2}
    return LoopConfig(**{**options, "cpu": True, "progress": False, **changes})


@pytest.fixture
def two_steps(tmp_path) -> Path:
    """A 2-update run's checkpoint (the run's output folder is ``tmp_path``)."""
    run(make_model(), saving(tmp_path, max_steps=2))
    return tmp_path / "checkpoint-000002"


# -- the files -----------------------------------------------------------------------------


def test_checkpoints_are_safetensors_and_json_only(tmp_path):
    caller = {"history": [1.5, 2.5], "pair": (1, "a"), "best": torch.arange(3.0), "none": None}
    seen: dict = {}
    result = run(make_model(), saving(tmp_path), state=(lambda: caller, seen.update))
    assert result.last_checkpoint == tmp_path / "checkpoint-000004"
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-000002", "checkpoint-000004"]
    for directory in checkpoint_dirs(tmp_path):
        assert {p.name for p in directory.iterdir()} == FILES
        for path in directory.iterdir():
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            else:  # a safetensors file, or this raises
                load_file(str(path))
    state = json.loads((tmp_path / "checkpoint-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["micro_step"] == 4 and state["world_size"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the caller's state comes back as it went in (tuples and tensors included)
    run(make_model(), saving(tmp_path, resume_from_checkpoint=True), state=(dict, seen.update))
    assert seen.keys() == caller.keys() and seen["pair"] == (1, "a") and seen["none"] is None
    assert seen["history"] == [1.5, 2.5] and torch.equal(seen["best"], caller["best"])


def _through_files(tree, tmp_path: Path, stem: str):
    """``tree`` split, written as safetensors + JSON, read back and joined."""
    json_tree, tensors = split_tensors(tree)
    save_file(tensors, str(tmp_path / f"{stem}.safetensors"))
    (tmp_path / f"{stem}.json").write_text(json.dumps(json_tree))
    loaded = json.loads((tmp_path / f"{stem}.json").read_text())
    return join_tensors(loaded, load_file(str(tmp_path / f"{stem}.safetensors")))


def test_split_and_join_round_trip_an_adamw_state(tmp_path):
    model = make_model()
    optimizer = torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[3].weight], "weight_decay": 0.1},
            {"params": [model[0].bias, model[3].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(0.9, 0.95),
    )
    for _ in range(2):
        model(torch.randn(5, DIM)).sum().backward()
        optimizer.step()
    state = optimizer.state_dict()
    back = _through_files(state, tmp_path, "optimizer")
    assert back["param_groups"] == state["param_groups"]  # betas stay a tuple
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["state"].keys() == state["state"].keys() == {0, 1, 2, 3}
    for index, slots in state["state"].items():
        assert back["state"][index].keys() == slots.keys()
        for name, value in slots.items():
            assert torch.equal(back["state"][index][name], value), (index, name)
    fresh = torch.optim.AdamW([{"params": g["params"]} for g in optimizer.param_groups], lr=1.0)
    fresh.load_state_dict(back)  # what load_training_state does
    assert fresh.param_groups[0]["betas"] == (0.9, 0.95) and fresh.param_groups[0]["lr"] == 1e-2
    assert torch.equal(
        fresh.state[model[0].weight]["exp_avg"], optimizer.state[model[0].weight]["exp_avg"]
    )


def test_split_and_join_round_trip_random_states(tmp_path):
    py, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    back = _through_files({"python": py, "numpy": np_state}, tmp_path, "rng")
    assert back["python"] == py
    assert back["numpy"][0] == np_state[0] and back["numpy"][2:] == np_state[2:]
    assert np.array_equal(back["numpy"][1], np_state[1])
    assert back["numpy"][1].dtype == np_state[1].dtype

    # capture_rng -> files -> restore_rng: every generator repeats its draws
    state = _through_files(capture_rng(), tmp_path, "all")
    draws = random.random(), np.random.rand(), torch.rand(())  # noqa: NPY002
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(())) == draws  # noqa: NPY002


def test_split_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError, match=r"state value of type set at a\.b cannot be stored"):
        split_tensors({"a": {"b": {1, 2}}})
    with pytest.raises(TypeError, match=r"state key 1.5 at a is not a str"):
        split_tensors({"a": {1.5: 0, "x": 1}})


# -- which checkpoints count ---------------------------------------------------------------


def test_save_total_limit_keeps_the_newest(tmp_path):
    run(make_model(), saving(tmp_path, max_steps=5, save_steps=1, save_total_limit=2))
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-000004", "checkpoint-000005"]
    run(make_model(), saving(tmp_path / "all", max_steps=3, save_steps=1, save_total_limit=None))
    assert len(checkpoint_dirs(tmp_path / "all")) == 3


def test_incomplete_folders_are_not_checkpoints(two_steps):
    root = two_steps.parent
    (root / "checkpoint-000009").mkdir()  # no trainer_state.json: never finished
    (root / ".checkpoint-000010.tmp").mkdir()
    (root / ".checkpoint-000010.tmp" / "trainer_state.json").write_text("{}")
    (root / "checkpoint-x").mkdir()
    assert checkpoint_dirs(root) == [two_steps] and latest_checkpoint(root) == two_steps
    assert latest_checkpoint(root / "missing") is None


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    result = run(make_model(), saving(tmp_path, max_steps=2, resume_from_checkpoint=True))
    assert result.resumed_from is None and result.n_steps == 2


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": 1}, r"written with seed=0, resumed with seed=1; resume with the same setting"),
        (
            {"gradient_accumulation_steps": 2},
            r"written with gradient_accumulation_steps=1, resumed with "
            r"gradient_accumulation_steps=2",
        ),
    ],
)
def test_resume_with_another_setting_is_refused(two_steps, changes, message):
    config = saving(two_steps.parent, resume_from_checkpoint=True, **changes)
    with pytest.raises(CheckpointError, match=rf"checkpoint-000002: {message}"):
        run(make_model(), config)


def test_resume_with_another_process_count_is_refused(two_steps):
    path = two_steps / "trainer_state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "world_size": 2}))
    with pytest.raises(
        CheckpointError,
        match=r"written by 2 process\(es\), resumed with 1; resume with the same number",
    ):
        run(make_model(), saving(two_steps.parent, resume_from_checkpoint=True))


def test_damaged_weights_name_the_file(two_steps):
    weights = two_steps / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: not a readable safetensors"):
        run(make_model(), saving(two_steps.parent, resume_from_checkpoint=str(two_steps)))


def test_damaged_trainer_state_names_the_file(two_steps):
    (two_steps / "trainer_state.json").write_text('{"step": 2,')
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: trainer state is not valid"):
        run(make_model(), saving(two_steps.parent, resume_from_checkpoint=str(two_steps)))


def test_another_model_is_refused_with_the_parameter(two_steps):
    message = r"checkpoint-000002: 0\.\w+ has shape \(8.*\) in the checkpoint, \(6.*\) in the model"
    with pytest.raises(CheckpointError, match=message):
        run(make_model(hidden=6), saving(two_steps.parent, resume_from_checkpoint=True))


def test_a_missing_checkpoint_directory_is_named(tmp_path):
    config = saving(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-000007"))
    with pytest.raises(CheckpointError, match=r"checkpoint-000007: checkpoint directory not found"):
        run(make_model(), config)


# -- a killed process resumes --------------------------------------------------------------


def start_worker(out: Path, *options: str) -> subprocess.Popen:
    argv = [sys.executable, WORKER, "--out", str(out), "--final", str(out / "final.safetensors")]
    return subprocess.Popen(
        [*argv, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The worker's final parameters and caller state after 12 updates in one go."""
    out = tmp_path_factory.mktemp("uninterrupted")
    code, stdout, stderr = finish(start_worker(out))
    assert code == 0, stderr[-3000:]
    assert "done: 12 updates, resumed from None" in stdout
    return load_file(str(out / "final.safetensors"))


@pytest.mark.parametrize(
    ("option", "leftover"),
    [
        ("--kill-after=5", None),  # between checkpoints 4 and 6
        ("--kill-while-saving=6", ".checkpoint-000006.tmp"),  # checkpoint 6 half written
    ],
    ids=["after-update-5", "while-saving-6"],
)
def test_a_killed_process_resumes_to_the_uninterrupted_parameters(
    tmp_path, uninterrupted, option, leftover
):
    out = tmp_path / "run"
    code, _, stderr = finish(start_worker(out, option))
    assert code == -9, f"the worker was to kill itself, it ended with {code}: {stderr[-3000:]}"
    # checkpoint 6 never became visible: the latest is 4, and what is left of 6 is hidden
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-000002", "checkpoint-000004"]
    assert latest_checkpoint(out) == out / "checkpoint-000004"
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == ([leftover] if leftover else [])
    if leftover:
        assert "weights.safetensors" in {p.name for p in (out / leftover).iterdir()}
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == ([1, 2, 3, 4, 5] if leftover is None else [1, 2, 3, 4, 5, 6])
    assert not (out / "final.safetensors").exists()

    code, stdout, stderr = finish(start_worker(out, "--resume"))
    assert code == 0, stderr[-3000:]
    assert "done: 12 updates, resumed from checkpoint-000004" in stdout
    final = load_file(str(out / "final.safetensors"))
    assert final.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(final[name], value, rtol=1e-6, atol=1e-7, msg=name)
    # the caller's state came back too: 12 updates x 2 micro-batches x 8 items
    assert int(final["caller.items"]) == 12 * 2 * 8
    # metrics.jsonl holds each update once; the hidden leftover was cleared by the rewrite
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 13))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
