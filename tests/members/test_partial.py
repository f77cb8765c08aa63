"""PartialMembers: copies == stand-alone models, shared part once, copies as real layers, options."""

from __future__ import annotations

import copy

import pytest
import torch

from auq.backbone import Backbone, pool_hidden_states
from auq.members import PartialMembers
from auq.members.partial import ARCHITECTURES
from auq.scoring.batching import collate

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
def test_copies_equal_stand_alone_models_with_their_weights(model_type, tiny_gpt2_dir):
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
    # the same modules and kernels on the same B rows (bit-equal here; a BLAS may round by
    # memory alignment, hence the float32 tolerance)
    torch.testing.assert_close(phi, torch.stack(loop), rtol=1e-6, atol=1e-6)
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


def test_shared_lower_part_runs_once_and_each_copy_runs_the_real_layer(tiny_bert_dir):
    """Embeddings and layer 0 once on B rows; layer 1 once per member, with member k's weights."""
    backbone = Backbone.from_pretrained(tiny_bert_dir, max_length=32)
    member = PartialMembers.build(backbone, n_members=K, n_top_layers=1)
    calls = {"embeddings": [], "layer0": []}
    top_calls = []

    def record(name):
        return lambda module, args, output: calls[name].append(output.shape[0])

    layers = member.model.encoder.layer
    member.model.embeddings.register_forward_hook(record("embeddings"))
    layers[0].register_forward_hook(record("layer0"))
    base_weight = layers[1].output.dense.weight.data_ptr()

    def record_top(module, args, output):  # which weights the real module ran with
        states = output[0] if isinstance(output, tuple) else output
        top_calls.append((states.shape[0], module.output.dense.weight.data_ptr()))

    layers[1].register_forward_hook(record_top)
    member.encode(member.tokenize(PROMPTS, RESPONSES))  # one micro-batch of B = 2
    assert calls["embeddings"] == [2] and calls["layer0"] == [2]
    stacked = member.member_params[member.param_names.index("0.output.dense.weight")]
    assert top_calls == [(2, stacked[k].data_ptr()) for k in range(K)]  # views, in order
    assert all(ptr != base_weight for _, ptr in top_calls)  # the base top layer never ran


def test_forward_pools_each_member_as_pooling_the_stacked_states(tiny_bert_dir, tiny_gpt2_dir):
    """The member-by-member forward == the generic one over (K, B, L, d); one row per item."""
    for path in (tiny_bert_dir, tiny_gpt2_dir):
        backbone = Backbone.from_pretrained(path, max_length=32)
        tokens = backbone.tokenize(PROMPTS, RESPONSES)
        member = PartialMembers.build(backbone, n_members=K, n_top_layers=2, init_noise=0.05)
        inputs = collate(tokens, [0, 1], pad_token_id=backbone.tokenizer.pad_token_id)
        with torch.no_grad():
            fast = member(**inputs)
            hidden = member._member_hidden(inputs)  # (K, B, L, d) all at once
            reference = member._pool_members(hidden, inputs["attention_mask"])
        assert fast.shape == (K, 2, member.hidden_size) and hidden.shape[:2] == (K, 2)
        torch.testing.assert_close(fast, reference, rtol=0, atol=1e-6)
        # the engine plans the same micro-batches as for the one model
        assert member.rows_per_item == 1
        member.encode(tokens)
        backbone.encode(tokens, feature_cache=False)
        assert member.last_scoring_stats.padded_tokens == backbone.last_scoring_stats.padded_tokens


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
