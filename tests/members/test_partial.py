"""PartialMembers: batched copies == copies run one by one, shared part once, options."""

from __future__ import annotations

import copy

import pytest
import torch

from auq.backbone import Backbone, pool_hidden_states
from auq.members import PartialMembers
from auq.members.partial import ARCHITECTURES

K = 3
PROMPTS = ["How do I cook rice?", "Learn a language quickly?"]
RESPONSES = ["Rinse it, then simmer covered for twenty minutes.", "Write code daily."]


def _tiny_model(model_type: str):
    import transformers as tf

    small = {"vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 2}
    decoder = {**small, "hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 1}
    configs = {
        "bert": lambda: tf.BertConfig(**small, hidden_size=32, intermediate_size=64),
        "roberta": lambda: tf.RobertaConfig(**small, hidden_size=32, intermediate_size=64),
        "electra": lambda: tf.ElectraConfig(
            **small, embedding_size=16, hidden_size=32, intermediate_size=64
        ),
        "distilbert": lambda: tf.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64
        ),
        "gpt2": lambda: tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2),
        "llama": lambda: tf.LlamaConfig(**decoder),
        "mistral": lambda: tf.MistralConfig(**decoder),
        "qwen2": lambda: tf.Qwen2Config(**decoder),
        "qwen3": lambda: tf.Qwen3Config(**decoder, head_dim=16),
    }
    torch.manual_seed(0)
    return tf.AutoModel.from_config(configs[model_type]()).eval()


def _inputs(b: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 4:] = 0  # right padding on one row
    return {"input_ids": ids, "attention_mask": mask}


def _copy_k(member: PartialMembers, k: int):
    """A stand-alone model whose top layers are member k's copies."""
    model = copy.deepcopy(member.model)
    layers = model.get_submodule(ARCHITECTURES[model.config.model_type][0])
    top = layers[len(layers) - member.n_top_layers :]
    with torch.no_grad():
        for key, p in zip(member.param_names, member.member_params, strict=True):
            j, name = key.split(".", 1)
            top[int(j)].get_parameter(name).copy_(p[k])
    return model


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES.keys() - {"xlm-roberta"}))
def test_batched_copies_equal_copies_run_one_by_one(model_type, tiny_gpt2_dir):
    tokenizer = Backbone.from_pretrained(tiny_gpt2_dir).tokenizer
    backbone = Backbone(_tiny_model(model_type), tokenizer)
    member = PartialMembers.build(backbone, n_members=K, n_top_layers=1, init_noise=0.05)
    inputs = _inputs()
    with torch.no_grad():
        phi = member(**inputs)  # (K, 3, d)
        loop = []
        for k in range(K):
            hidden = _copy_k(member, k)(**inputs).last_hidden_state
            loop.append(pool_hidden_states(hidden, inputs["attention_mask"], member.pooling))
    torch.testing.assert_close(phi, torch.stack(loop), rtol=1e-5, atol=1e-5)
    for k in range(1, K):  # the noise makes the members differ
        assert (phi[k] - phi[0]).abs().max() > 1e-4


@pytest.mark.parametrize("n_top_layers", [1, 2])
def test_noise_free_copies_equal_the_base_model(tiny_bert_dir, tiny_gpt2_dir, n_top_layers):
    for path in (tiny_bert_dir, tiny_gpt2_dir):
        backbone = Backbone.from_pretrained(path, max_length=32)
        tokens = backbone.tokenize(PROMPTS, RESPONSES)
        base = backbone.encode(tokens)
        member = PartialMembers.build(
            backbone, n_members=K, n_top_layers=n_top_layers, init_noise=0.0
        )
        torch.testing.assert_close(member.encode(tokens), base.expand(K, -1, -1))


def test_shared_lower_part_runs_once_on_b_rows(tiny_bert_dir):
    backbone = Backbone.from_pretrained(tiny_bert_dir, max_length=32)
    member = PartialMembers.build(backbone, n_members=K, n_top_layers=1)
    calls = {"embeddings": [], "layer0": [], "layer1": 0}

    def record(name):
        return lambda module, args, output: calls[name].append(output.shape[0])

    layers = member.model.encoder.layer
    member.model.embeddings.register_forward_hook(record("embeddings"))
    layers[0].register_forward_hook(record("layer0"))

    def count_top(module, args, output):  # the base forward never finishes layer 1
        calls["layer1"] += 1

    layers[1].register_forward_hook(count_top)
    member.encode(member.tokenize(PROMPTS, RESPONSES))  # one micro-batch of B = 2
    assert calls["embeddings"] == [2] and calls["layer0"] == [2]
    assert calls["layer1"] == 1  # the K copies: one vmapped call, not K


def test_gradients_reach_every_copy_and_only_the_copies(tiny_gpt2_dir):
    member = PartialMembers.build(
        Backbone.from_pretrained(tiny_gpt2_dir, max_length=32), n_members=K, n_top_layers=2
    )
    member.train()
    phi = member.features_of(member.tokenize(PROMPTS, RESPONSES), [0, 1])
    (phi * torch.randn_like(phi)).sum().backward()
    for key, p in zip(member.param_names, member.member_params, strict=True):
        if key.endswith("ln_f.bias"):
            continue
        assert (p.grad.flatten(1).norm(dim=1) > 0).all(), key
    assert all(p.grad is None for p in member.model.parameters())


@pytest.mark.parametrize(
    ("n_top_layers", "message"),
    [
        (3, r"n_top_layers must be in \[1, 2\] \(the model has 2 layers\), got 3"),
        (0, r"n_top_layers must be in \[1, 2\]"),
        (1.5, r"n_top_layers must be an integer in \[1, 2\]"),
    ],
)
def test_bad_depth_is_refused_with_the_range(tiny_bert_dir, n_top_layers, message):
    backbone = Backbone.from_pretrained(tiny_bert_dir, max_length=32)
    with pytest.raises(ValueError, match=message):
        PartialMembers.build(backbone, n_members=K, n_top_layers=n_top_layers)


def test_unsupported_architecture_is_named(tiny_gpt2_dir):
    from transformers import OPTConfig, OPTModel

    config = OPTConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2
    )
    tokenizer = Backbone.from_pretrained(tiny_gpt2_dir).tokenizer
    backbone = Backbone(OPTModel(config).eval(), tokenizer)
    with pytest.raises(ValueError, match=r"does not support model_type='opt'.*supported: bert"):
        PartialMembers.build(backbone, n_members=K)
