"""LoraMembers: batched == PEFT adapter by adapter (forward and gradients), in-place update, options."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch import Tensor

from auq.backbone import Backbone, pool_hidden_states
from auq.members import LoraMembers
from auq.members.lora import _StackedLora, update_gram
from auq.scoring.batching import collate

K = 3
PROMPTS = ["How do I cook rice?", "Learn a language quickly?"]
RESPONSES = ["Rinse it, then simmer covered for twenty minutes.", "Write code daily."]


@pytest.fixture(params=["bert", "gpt2"])
def model_dir(request, tiny_bert_dir, tiny_gpt2_dir):
    return tiny_bert_dir if request.param == "bert" else tiny_gpt2_dir


def _build(path, **options) -> LoraMembers:
    backbone = Backbone.from_pretrained(path, max_length=32)
    return LoraMembers.build(backbone, **{"n_members": K, "r": 4, **options})


def test_batched_members_equal_peft_adapters_one_by_one(model_dir, tmp_path):
    """Saved members load into PEFT; set_adapter(member_k) reproduces row k of one forward."""
    from peft import PeftModel

    member = _build(model_dir, lora_alpha=8, init_scale=0.05)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    phi = member.encode(tokens)  # (K, 2, d)
    member.save_members(tmp_path)

    base = Backbone.from_pretrained(model_dir, max_length=32).model
    peft_model = PeftModel.from_pretrained(base, tmp_path / "member_0", adapter_name="member_0")
    for k in range(1, K):
        peft_model.load_adapter(tmp_path / f"member_{k}", adapter_name=f"member_{k}")
    peft_model.eval()
    inputs = collate(tokens, [0, 1], pad_token_id=member.tokenizer.pad_token_id)
    loop = []
    with torch.no_grad():
        for k in range(K):
            peft_model.set_adapter(f"member_{k}")
            hidden = peft_model(**inputs).last_hidden_state
            loop.append(pool_hidden_states(hidden, inputs["attention_mask"], member.pooling))
    torch.testing.assert_close(phi, torch.stack(loop), rtol=1e-5, atol=1e-5)


def test_gradients_equal_peft_adapters_one_by_one(model_dir, tmp_path):
    """The in-place update differentiates like PEFT: dL/dA_k, dL/dB_k of row k's loss."""
    from peft import PeftModel

    member = _build(model_dir, lora_alpha=8, init_scale=0.05)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    inputs = collate(tokens, [0, 1], pad_token_id=member.tokenizer.pad_token_id)
    w = torch.randn(K, 2, member.hidden_size, generator=torch.Generator().manual_seed(0))
    member.save_members(tmp_path)
    member.eval()  # deterministic (no dropout); autograd on
    (member(**inputs) * w).sum().backward()

    base = Backbone.from_pretrained(model_dir, max_length=32).model
    peft_model = PeftModel.from_pretrained(
        base, tmp_path / "member_0", adapter_name="member_0", is_trainable=True
    )
    for k in range(1, K):
        peft_model.load_adapter(tmp_path / f"member_{k}", adapter_name=f"member_{k}")
    peft_model.eval()
    for k in range(K):
        peft_model.set_adapter(f"member_{k}")
        hidden = peft_model(**inputs).last_hidden_state
        phi = pool_hidden_states(hidden, inputs["attention_mask"], member.pooling)
        (phi * w[k]).sum().backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    for name, lora in zip(member.target_names, member.adapters, strict=True):
        for k in range(K):
            for part, ours in (("lora_A", lora.lora_A.grad[k]), ("lora_B", lora.lora_B.grad[k])):
                theirs = grads[f"base_model.model.{name}.{part}.member_{k}.weight"]
                torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_in_place_update_equals_the_out_of_place_sum_with_its_gradients():
    """add_to updates the layer output in place (float32) and keeps every gradient exact."""
    gen = torch.Generator().manual_seed(0)
    lora = _StackedLora(
        K, 4, 6, 5, init_lora_weights=True, init_scale=0.1, generator=gen
    )  # in 6, out 5
    weight = torch.randn(5, 6, generator=gen, requires_grad=True)
    x = torch.randn(K, 7, 6, generator=gen, requires_grad=True)
    upstream = torch.randn(K, 7, 5, generator=gen)

    def run(in_place: bool):
        for t in (weight, x, lora.lora_A, lora.lora_B):
            t.grad = None
        out = torch.nn.functional.linear(x, weight)  # the base layer's output
        if in_place:
            summed = lora.add_to(out, x, scaling=2.0, p=0.0, training=False)
            assert summed.data_ptr() == out.data_ptr()  # no copy of the output
        else:
            update = torch.bmm(torch.bmm(x, lora.lora_A.transpose(1, 2)), lora.lora_B.mT)
            summed = out + 2.0 * update
        (summed * upstream).sum().backward()
        grads = [t.grad.clone() for t in (weight, x, lora.lora_A, lora.lora_B)]
        return summed.detach(), grads

    fast, fast_grads = run(True)
    reference, reference_grads = run(False)
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)
    for a, b in zip(fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # under autocast (bf16 output, float32 adapters) the output is left alone
    out = torch.randn(K, 7, 5, generator=gen).bfloat16()
    before = out.clone()
    with torch.no_grad():
        summed = lora.add_to(out, x.detach(), scaling=2.0, p=0.0, training=False)
    assert torch.equal(out, before) and summed.dtype == torch.bfloat16


def test_members_differ_after_build_and_zero_b_is_the_base_model(tiny_bert_dir):
    tokens = Backbone.from_pretrained(tiny_bert_dir, max_length=32).tokenize(PROMPTS, RESPONSES)
    phi = _build(tiny_bert_dir).encode(tokens)
    for k in range(1, K):
        assert (phi[k] - phi[0]).abs().max() > 1e-4
    # init_scale=0 is PEFT's B = 0: every member equals the untouched base model
    base = Backbone.from_pretrained(tiny_bert_dir, max_length=32).encode(tokens)
    zero = _build(tiny_bert_dir, init_scale=0.0).encode(tokens)
    torch.testing.assert_close(zero, base.expand(K, -1, -1), rtol=0, atol=1e-6)


def test_gradients_reach_every_adapter_of_every_member(model_dir):
    member = _build(model_dir, lora_dropout=0.1)
    member.train()
    tokens = member.tokenize(PROMPTS, RESPONSES)
    phi = member.features_of(tokens, [0, 1])  # (K, 2, d)
    (phi * torch.randn_like(phi)).sum().backward()
    for name, lora in zip(member.target_names, member.adapters, strict=True):
        for p in (lora.lora_A, lora.lora_B):
            per_member = p.grad.flatten(1).norm(dim=1)  # (K,)
            assert (per_member > 0).all(), name
    assert all(p.grad is None for p in member.model.parameters())


def test_forward_leaves_no_hooks_and_a_plain_base_model(tiny_gpt2_dir):
    plain = Backbone.from_pretrained(tiny_gpt2_dir, max_length=32).model
    member = _build(tiny_gpt2_dir)
    member.encode(member.tokenize(PROMPTS, RESPONSES))
    assert all(not m._forward_hooks for m in member.model.modules())
    assert member.model.state_dict().keys() == plain.state_dict().keys()


def test_lora_dropout_acts_in_training_only(tiny_gpt2_dir):
    member = _build(tiny_gpt2_dir, lora_dropout=0.5)
    tokens = member.tokenize(PROMPTS, RESPONSES)
    torch.testing.assert_close(member.encode(tokens), member.encode(tokens), rtol=0, atol=0)
    member.train()
    a, b = member.features_of(tokens, [0, 1]), member.features_of(tokens, [0, 1])
    assert (a - b).abs().max() > 1e-6


def test_all_linear_skips_the_pooler_and_names_select_layers(tiny_bert_dir, tiny_gpt2_dir):
    bert = _build(tiny_bert_dir)
    assert bert.target_names and not any("pooler" in n for n in bert.target_names)
    gpt2 = _build(tiny_gpt2_dir, target_modules=["c_attn"])
    assert gpt2.target_names == ["h.0.attn.c_attn", "h.1.attn.c_attn"]
    regex = _build(tiny_gpt2_dir, target_modules=r"h\.1\.mlp\..*")
    assert regex.target_names == ["h.1.mlp.c_fc", "h.1.mlp.c_proj"]


def _explicit_penalty(member: LoraMembers) -> Tensor:
    """diversity · mean over layers and pairs of cos² of the full out×in updates B_k A_k."""
    per_layer = []
    for lora in member.adapters:
        updates = torch.bmm(lora.lora_B, lora.lora_A).flatten(1).double()  # (K, out·in)
        unit = updates / updates.norm(dim=1, keepdim=True)
        cos = unit @ unit.T
        i, j = torch.triu_indices(K, K, offset=1)
        per_layer.append(cos[i, j].square().mean())
    return member.diversity * torch.stack(per_layer).mean()


def test_diversity_penalty_equals_the_cosines_of_the_full_updates(model_dir):
    member = _build(model_dir, diversity=0.3)
    reg = member.regularizer()
    assert reg.shape == () and reg.requires_grad
    assert 0 < reg.item() < 0.3
    torch.testing.assert_close(reg.double(), _explicit_penalty(member), rtol=1e-5, atol=1e-7)
    lora = member.adapters[0]
    gram = update_gram(lora.lora_A, lora.lora_B)
    updates = torch.bmm(lora.lora_B, lora.lora_A).flatten(1)
    torch.testing.assert_close(gram.float(), updates @ updates.T, rtol=1e-5, atol=1e-9)
    assert _build(model_dir).regularizer().item() == 0.0  # diversity=0: off


def test_diversity_penalty_is_scale_invariant_and_function_preserving_moves_keep_it(model_dir):
    """A_k → G_k A_k, B_k → B_k G_k⁻¹ (incl. A ×c, B ×1/c): same function, same penalty."""
    member = _build(model_dir, diversity=0.5, init_scale=0.05)
    with torch.no_grad():  # similar members (random ones are near-orthogonal: penalty ≈ 0)
        for lora in member.adapters:
            for p in (lora.lora_A, lora.lora_B):
                p.copy_(p[:1] + 0.5 * (p - p[:1]))
    tokens = member.tokenize(PROMPTS, RESPONSES)
    phi, reg = member.encode(tokens), member.regularizer().item()
    assert 0.05 < reg < 0.5
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lora in member.adapters:
            c = torch.tensor([10.0, 0.1, 3.0])[:, None, None]  # per member
            g = torch.eye(4) + 0.3 * torch.randn(K, 4, 4, generator=gen)  # invertible r×r
            lora.lora_A.copy_(c * (g @ lora.lora_A))
            lora.lora_B.copy_(lora.lora_B @ torch.linalg.inv(g) / c)
    torch.testing.assert_close(member.encode(tokens), phi, rtol=1e-4, atol=1e-4)
    assert abs(member.regularizer().item() - reg) < 1e-6
    with torch.no_grad():  # inflating every adapter changes the function, not the penalty
        for lora in member.adapters:
            lora.lora_A.mul_(7.0)
            lora.lora_B.mul_(7.0)
    assert (member.encode(tokens) - phi).abs().max() > 1e-3
    assert abs(member.regularizer().item() - reg) < 1e-6


def test_diversity_penalty_falls_as_the_members_differ(tiny_gpt2_dir):
    member = _build(tiny_gpt2_dir, diversity=0.2, init_scale=0.05)
    own = [(lora.lora_A.detach().clone(), lora.lora_B.detach().clone()) for lora in member.adapters]

    def blend(weight: float) -> float:
        """Members' B from member 0's (weight 0: identical members) to their own (weight 1)."""
        with torch.no_grad():
            for lora, (a, b) in zip(member.adapters, own, strict=True):
                lora.lora_A.copy_(a[:1].expand_as(a))
                lora.lora_B.copy_((1 - weight) * b[:1] + weight * b)
        return member.regularizer().item()

    values = [blend(w) for w in (0.0, 0.25, 0.5, 1.0)]
    assert abs(values[0] - 0.2) < 1e-6  # collinear updates: cos² = 1
    assert all(a > b for a, b in pairwise(values)), values
    with torch.no_grad():  # updates reading disjoint input coordinates are orthogonal
        for lora in member.adapters:
            fan_in = lora.lora_A.shape[2]
            support = torch.arange(fan_in) % K == torch.arange(K)[:, None]  # (K, in)
            lora.lora_A.mul_(support[:, None, :])
    assert abs(member.regularizer().item()) < 1e-7
    # and gradient descent on the penalty alone spreads random members apart
    member = _build(tiny_gpt2_dir, diversity=0.2, init_scale=0.05)
    start = member.regularizer()
    start.backward()
    for lora in member.adapters:
        for p in (lora.lora_A, lora.lora_B):
            assert (p.grad.flatten(1).norm(dim=1) > 0).all()
    opt = torch.optim.SGD(member.adapters.parameters(), lr=0.01)
    for _ in range(5):
        opt.zero_grad()
        member.regularizer().backward()
        opt.step()
    assert member.regularizer().item() < start.item()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"r": 0}, "r must be an integer >= 1"),
        ({"lora_alpha": 0}, "lora_alpha must be a finite number > 0, got 0"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
        ({"init_lora_weights": "pissa"}, "valid choices: True, 'gaussian'"),
        ({"init_scale": -1.0}, "init_scale must be a finite number >= 0, got -1.0"),
        ({"diversity": -1.0}, "diversity must be a finite number >= 0, got -1.0"),
        ({"diversity": "0.1"}, "diversity must be a finite number >= 0, got '0.1'"),
        ({"diversity": float("nan")}, "diversity must be a finite number >= 0, got nan"),
        ({"n_members": 1}, "n_members must be an integer >= 2 for an ensemble, got 1"),
        ({"target_modules": ["nope"]}, "matches no nn.Linear/Conv1D layer.*h.0.attn.c_attn"),
    ],
)
def test_bad_options_are_refused_with_the_valid_values(tiny_gpt2_dir, options, message):
    with pytest.raises(ValueError, match=message):
        _build(tiny_gpt2_dir, **options)


def test_gradient_checkpointing_is_refused_in_training(tiny_gpt2_dir):
    member = _build(tiny_gpt2_dir)
    enable = getattr(member.model, "activation_checkpointing_enable", None)
    (enable or member.model.gradient_checkpointing_enable)()
    member.train()
    with pytest.raises(RuntimeError, match="does not support gradient checkpointing"):
        member.features_of(member.tokenize(PROMPTS, RESPONSES), [0, 1])
