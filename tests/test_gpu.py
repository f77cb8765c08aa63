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
    exact = {"precision": "fp32"}  # "auto" autocasts to bf16 on a GPU
    gpu_model = auq.RewardModel.from_pretrained(tmp_path, device="cuda", scoring=exact)
    assert gpu_model.backbone.device.type == "cuda"
    gpu = gpu_model.predict(test)
    assert gpu.margin_mean.device.type == "cpu"  # predictions come back on the CPU
    torch.testing.assert_close(gpu.margin_mean, cpu.margin_mean, rtol=1e-3, atol=1e-3)
    gpu_model.scoring.precision = "auto"
    bf16 = gpu_model.predict(test)
    assert gpu_model.last_scoring_stats.precision in ("bf16", "fp16")
    torch.testing.assert_close(bf16.margin_mean, cpu.margin_mean, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_trl_checkpoint_dir"])
def test_gpu_engine_fast_paths_equal_plain_scoring(fixture, request):
    """Bucketed, prefix-shared and left-padded scoring on the GPU equal one text at a time."""
    from auq.backbone import Backbone
    from auq.scoring import prompt_groups

    bb = Backbone.from_pretrained(request.getfixturevalue(fixture), max_length=128)
    bb = bb.to("cuda")
    bb.scoring.precision = "fp32"
    prompts = ["Explain carefully how one cooks plain white rice on a stove."] * 6 + ["hi"] * 2
    responses = [
        " Rinse it.",
        " Simmer.",
        " No.",
        " Use water.",
        " Boil it first.",
        " ok",
        " a",
        " b",
    ]
    tokens = bb.tokenize(prompts, responses)
    plain = bb.encode(tokens, batch_size=1, bucketing=False, prefix_sharing=False)
    shared = bb.encode(tokens, groups=prompt_groups(prompts), min_prefix_tokens=2)
    assert bb.last_scoring_stats.n_prefix_shared == 8
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-4)
    left = bb.encode(tokens, padding_side="left", prefix_sharing=False)
    torch.testing.assert_close(left, plain, rtol=0, atol=1e-4)


def test_gpu_training_runs_on_the_device(tiny_gpt2_dir, builtin_small):
    train, test = builtin_small
    rm = auq.RewardModel.from_backbone(
        tiny_gpt2_dir, uq="lora", n_members=2, member_options={"r": 2}, device="cuda"
    )
    rm.fit(train.select(range(32)), epochs=1, progress=False)
    assert rm.predict(test).margin_samples.shape == (2, len(test))
