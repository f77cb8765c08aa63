"""Sharded scoring: two CPU processes under torchrun (gloo) give one process's results."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import auq
from auq.scoring.distributed import shard_bounds

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.mark.parametrize(("n", "world"), [(10, 2), (7, 3), (2, 4), (0, 2)])
def test_shards_cover_every_item_once_in_order(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_two_processes_under_torchrun_equal_one(tiny_gpt2_dir, builtin_small, tmp_path):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=3, max_length=64)
    rm.fit(train.select(range(24)), epochs=1, progress=False)
    rm.save_pretrained(tmp_path / "rm")
    prompts = [test.prompts[i // 3] for i in range(15)]  # groups of 3 responses per prompt
    responses = [test.chosen[i] if i % 2 else test.rejected[i] for i in range(15)]
    (tmp_path / "texts.json").write_text(json.dumps({"prompts": prompts, "responses": responses}))
    expected = auq.RewardModel.from_pretrained(tmp_path / "rm").score(prompts, responses)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(WORKER), str(tmp_path / "rm"), str(tmp_path / "texts.json"), str(tmp_path / "out.st"),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    got = load_file(tmp_path / "out.st")
    torch.testing.assert_close(got["samples"], expected.samples, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["mean"], expected.mean, rtol=0, atol=1e-5)
