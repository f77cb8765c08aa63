"""Fixtures of the scoring tests: a Llama-style tokenizer built offline."""

from __future__ import annotations

import pytest

LLAMA_CORPUS = [
    "How do I cook rice so that it is fluffy and not sticky?",
    "Rinse the rice, use one and a half cups of water per cup, simmer covered.",
    "What is the best way to learn a new programming language quickly?",
    "Write small programs every day and read other people's code carefully.",
    "I am not sure, it depends, maybe ask someone else about it.",
    "Thanks for asking! Here is a clear, specific plan you can follow today.",
    "[user] [assistant] [system] be kind",
]

#: a Llama-2-like template: BOS once, every message closed by EOS
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
)


def build_llama_tokenizer(chat_template: str | None = LLAMA_CHAT_TEMPLATE):
    """A sentencepiece-like BPE (``▁`` word prefix) adding BOS ``<s>``, with EOS ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    tk.train_from_iterator(LLAMA_CORPUS * 4, trainer)
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="session")
def llama_tokenizer():
    return build_llama_tokenizer()


@pytest.fixture(scope="session")
def make_llama_tokenizer():
    """The builder itself, for tests that need a fresh tokenizer to change."""
    return build_llama_tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer Llama decoder (rotary positions, grouped-query attention), random weights."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = build_llama_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
