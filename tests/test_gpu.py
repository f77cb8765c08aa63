"""CUDA checks (skipped without a GPU): every method gives the CPU's predictions on GPU."""

from __future__ import annotations

import pytest
import torch

import auq

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

METHODS = {
    "heads": {"n_members": 4},
    "laplace": {},
    "lora": {"n_members": 3, "member_options": {"r": 2}},
    "partial": {"n_members": 3, "member_options": {"n_top_layers": 1}},
    "mc_dropout": {"n_passes": 4, "member_options": {"rate": 0.0}},
}


@pytest.mark.parametrize("uq", sorted(METHODS))
def test_gpu_predictions_match_cpu(uq, tiny_bert_dir, builtin_small, tmp_path):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_bert_dir, uq=uq, max_length=64, **METHODS[uq])
    rm.fit(train.select(range(32)), epochs=1, progress=False)
    rm.save_pretrained(tmp_path)
    cpu = rm.predict(test)
    gpu_model = auq.RewardModel.from_pretrained(tmp_path, device="cuda")
    assert gpu_model.backbone.device.type == "cuda"
    gpu = gpu_model.predict(test)
    assert gpu.margin_mean.device.type == "cpu"  # predictions come back on the CPU
    torch.testing.assert_close(gpu.margin_mean, cpu.margin_mean, rtol=1e-3, atol=1e-3)


def test_gpu_training_runs_on_the_device(tiny_gpt2_dir, builtin_small):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(
        tiny_gpt2_dir, uq="lora", n_members=2, member_options={"r": 2}, device="cuda"
    )
    rm.fit(train.select(range(32)), epochs=1, progress=False)
    assert rm.predict(test).margin_samples.shape == (2, len(test))
