"""Behaviour every member backbone shares: shapes, heads on top, what trains, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from auq.backbone import Backbone
from auq.heads.ensemble import EnsembleHead
from auq.losses import bradley_terry_loss
from auq.members import (
    MEMBER_REGISTRY,
    DeepMembers,
    LoraMembers,
    MCDropoutMembers,
    MemberBackbone,
    PartialMembers,
)

K = 3
PROMPTS = ["How do I cook rice?", "Learn a language?", "How do I cook rice?"]
CHOSEN = ["Rinse it, then simmer covered.", "Write small programs daily.", "Rinse and simmer."]
REJECTED = ["No idea.", "That is a stupid question and I will not answer it.", "Maybe ask?"]
METHODS = {
    "lora": {"r": 4},
    "partial": {"n_top_layers": 1},
    "deep": {},
    "mc_dropout": {"rate": 0.2},
}
#: parameter-name prefixes of the member backbone that must train
TRAINABLE = {
    "lora": ("adapters.",),
    "partial": ("member_params.",),
    "deep": ("model.", "copies."),
    "mc_dropout": ("model.",),
}


@pytest.fixture(params=["bert", "gpt2"])
def model_dir(request, tiny_bert_dir, tiny_gpt2_dir):
    return tiny_bert_dir if request.param == "bert" else tiny_gpt2_dir


def _count(method: str, k: int) -> dict[str, int]:
    """The size option: T passes for MC dropout, K members for the others."""
    return {"n_passes" if method == "mc_dropout" else "n_members": k}


def _build(model_dir, method, **extra) -> MemberBackbone:
    backbone = Backbone.from_pretrained(model_dir, max_length=32)
    return MEMBER_REGISTRY[method].build(
        backbone, **_count(method, K), **{**METHODS[method], **extra}
    )


def test_registry_names_every_class():
    assert MEMBER_REGISTRY["lora"] is LoraMembers
    assert MEMBER_REGISTRY["partial"] is PartialMembers
    assert MEMBER_REGISTRY["deep"] is DeepMembers
    assert MEMBER_REGISTRY["mc_dropout"] is MCDropoutMembers


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_ensemble_head_on_top(model_dir, method):
    member = _build(model_dir, method)
    tokens = member.tokenize(PROMPTS, CHOSEN)
    d = member.hidden_size
    phi = member.encode(tokens)
    assert phi.shape == (K, 3, d) and phi.dtype == torch.float32
    assert not member.training  # encode restores eval mode
    # mc_dropout: one head shared by the T passes; the others: one head per member
    head = EnsembleHead(d, n_members=1 if method == "mc_dropout" else K)
    assert head(phi).shape == (K, 3)
    member.train()
    train_phi = member.features_of(tokens, [0, 2])
    assert train_phi.shape == ((1 if method == "mc_dropout" else K), 2, d)
    assert head(train_phi).shape == train_phi.shape[:2]


@pytest.mark.parametrize("method", METHODS)
def test_training_changes_exactly_the_member_weights(model_dir, method):
    member = _build(model_dir, method)
    expected = {n for n, _ in member.named_parameters() if n.startswith(TRAINABLE[method])}
    trainable = {n for n, p in member.named_parameters() if p.requires_grad}
    assert trainable == expected
    head = EnsembleHead(member.hidden_size, n_members=1 if method == "mc_dropout" else K)
    params = [p for p in member.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    before = {n: p.detach().clone() for n, p in member.named_parameters()}
    tokens = member.tokenize(PROMPTS * 2, CHOSEN + REJECTED)
    torch.manual_seed(0)
    member.train()
    got_gradient = set()
    for _ in range(3):
        r = head(member.features_of(tokens, list(range(6))))  # (K, 6)
        loss = bradley_terry_loss(r[:, :3] - r[:, 3:]).mean()
        if method == "lora":
            loss = loss + member.regularizer()
        opt.zero_grad()
        loss.backward()
        got_gradient |= {
            n for n, p in member.named_parameters() if p.grad is not None and p.grad.any()
        }
        opt.step()
    changed = {n for n, p in member.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= expected  # nothing frozen moved
    assert got_gradient <= changed
    # the only trainable weights without a gradient: a BERT pooler (outside the features)
    # and a final-norm bias (a shared shift of every feature cancels in the margins)
    idle = {n for n in expected - got_gradient if "pooler" not in n and "ln_f.bias" not in n}
    assert not idle


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_gives_identical_features(model_dir, method, tmp_path):
    member = _build(model_dir, method)
    with torch.no_grad():  # stand-in for training: move every trainable weight
        for p in member.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    tokens = member.tokenize(PROMPTS, CHOSEN)
    phi = member.encode(tokens)
    # what RewardModel.save_pretrained does: the base model (member 0 for deep) + members
    member.model.save_pretrained(tmp_path / "backbone")
    member.tokenizer.save_pretrained(tmp_path / "backbone")
    member.save_members(tmp_path / "members")
    config = json.loads(json.dumps(member.get_config()))  # JSON-able
    assert "n_members" not in config
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))

    backbone = Backbone.from_pretrained(tmp_path / "backbone", max_length=32)
    loaded = MEMBER_REGISTRY[method].build(backbone, **_count(method, K), **config)
    loaded.load_members(tmp_path / "members")
    torch.testing.assert_close(loaded.encode(tokens), phi, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "partial", "deep"])
def test_damaged_member_files_name_the_file(tiny_bert_dir, method, tmp_path):
    from auq.utils.io import CheckpointError

    member = _build(tiny_bert_dir, method)
    member.save_members(tmp_path)
    weights = sorted(tmp_path.rglob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:100])
    loaded = _build(tiny_bert_dir, method)
    with pytest.raises(CheckpointError, match=weights.name):
        loaded.load_members(tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_fewer_than_two_members_is_refused(tiny_gpt2_dir, method):
    backbone = Backbone.from_pretrained(tiny_gpt2_dir, max_length=32)
    with pytest.raises(
        ValueError, match=r"(n_members|n_passes \(T dropout passes\)) must be an integer >= 2"
    ):
        MEMBER_REGISTRY[method].build(backbone, **_count(method, 1), **METHODS[method])


@pytest.mark.parametrize("method", METHODS)
def test_reward_checkpoints_are_refused(tiny_trl_checkpoint_dir, method):
    backbone = Backbone.from_pretrained(tiny_trl_checkpoint_dir, max_length=32)
    with pytest.raises(ValueError, match="needs a plain AutoModel backbone"):
        MEMBER_REGISTRY[method].build(backbone, **_count(method, K), **METHODS[method])
