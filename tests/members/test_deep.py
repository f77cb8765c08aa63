"""DeepMembers: member k == model k alone, independent perturbed copies, checkpoints."""

from __future__ import annotations

import pytest
import torch

from auq.backbone import Backbone
from auq.members import DeepMembers
from auq.utils.io import CheckpointError

K = 3
PROMPTS = ["How do I cook rice?", "Learn a language quickly?"]
RESPONSES = ["Rinse it, then simmer covered for twenty minutes.", "Write code daily."]


@pytest.fixture(params=["bert", "gpt2"])
def model_dir(request, tiny_bert_dir, tiny_gpt2_dir):
    return tiny_bert_dir if request.param == "bert" else tiny_gpt2_dir


def test_member_k_equals_model_k_alone(model_dir):
    member = DeepMembers.build(Backbone.from_pretrained(model_dir, max_length=32), n_members=K)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    phi = member.encode(tokens)  # (K, 2, d)
    for k, model in enumerate(member.members):
        alone = Backbone(model, member.tokenizer, max_length=32).encode(tokens)
        torch.testing.assert_close(phi[k], alone, rtol=0, atol=1e-6)
    for k in range(1, K):  # perturbed copies differ from member 0
        assert (phi[k] - phi[0]).abs().max() > 1e-4


def test_member_zero_is_the_loaded_model_and_copies_are_independent(tiny_gpt2_dir):
    backbone = Backbone.from_pretrained(tiny_gpt2_dir, max_length=32)
    member = DeepMembers.build(backbone, n_members=K)
    assert member.model is backbone.model and len(member.copies) == K - 1
    ids = [{id(p) for p in m.parameters()} for m in member.members]
    assert all(not (ids[i] & ids[j]) for i in range(K) for j in range(i + 1, K))
    exact = DeepMembers.build(
        Backbone.from_pretrained(tiny_gpt2_dir, max_length=32), n_members=K, init_noise=0.0
    )
    for p0, p1 in zip(exact.model.parameters(), exact.copies[1].parameters(), strict=True):
        assert torch.equal(p0, p1)


def test_save_members_writes_safetensors_per_copy(tiny_gpt2_dir, tmp_path):
    member = DeepMembers.build(Backbone.from_pretrained(tiny_gpt2_dir, max_length=32), n_members=K)
    member.save_members(tmp_path)
    assert not (tmp_path / "member_0").exists()  # member 0 is the RewardModel's backbone
    for k in range(1, K):
        assert (tmp_path / f"member_{k}" / "model.safetensors").is_file()
    (tmp_path / "member_2" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="member_2 holds no saved model"):
        member.load_members(tmp_path)


def test_bad_noise_is_refused(tiny_gpt2_dir):
    with pytest.raises(ValueError, match="init_noise must be >= 0"):
        DeepMembers.build(
            Backbone.from_pretrained(tiny_gpt2_dir, max_length=32), n_members=K, init_noise=-1
        )
