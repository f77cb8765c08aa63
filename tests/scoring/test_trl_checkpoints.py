"""Reward checkpoints trained by TRL's real ``RewardTrainer`` are scored exactly as in training.

Each checkpoint is trained for two steps, saved with ``trainer.save_model``, and
reloaded by auq. The reference is the trainer's own path: its ``_prepare_dataset``
(EOS appended, prompt + response joined, chat template applied) and one
right-padded batch from its ``DataCollatorForPreference`` through the model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from auq.backbone import Backbone  # noqa: E402
from auq.models.reward_model import RewardModel  # noqa: E402

MAX_POSITIONS = 128

#: plain rows of mixed lengths; "<EOS>" becomes the tokenizer's EOS (some texts end with it)
PLAIN = [
    {
        "prompt": "How do I cook rice?",
        "chosen": " Rinse the rice, use one and a half cups of water per cup, simmer covered.",
        "rejected": " I am not sure.",
    },
    {
        "prompt": "What is the best way to learn a new programming language quickly?",
        "chosen": " Write small programs every day.<EOS>",
        "rejected": " That is a stupid question and I will not answer it.",
    },
    {
        "prompt": "Thanks for asking! Here",
        "chosen": " is a clear, specific plan you can follow today.",
        "rejected": "<EOS>",
    },
    {"prompt": "hi", "chosen": " Thanks!", "rejected": " maybe ask someone else. <EOS><EOS>"},
]
CONV = [
    {
        "prompt": [{"role": "user", "content": "How do I cook rice?"}],
        "chosen": [{"role": "assistant", "content": "Rinse the rice and simmer it covered."}],
        "rejected": [{"role": "assistant", "content": "no"}],
    },
    {
        "prompt": [
            {"role": "system", "content": "be kind"},
            {"role": "user", "content": "What is the best way to learn?"},
        ],
        "chosen": [{"role": "assistant", "content": "Write small programs every day."}],
        "rejected": [{"role": "assistant", "content": "It depends."}],
    },
]
BERT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _plain(eos: str) -> list[dict]:
    return [{k: v.replace("<EOS>", eos) for k, v in row.items()} for row in PLAIN]


def _model_and_tokenizer(style: str, minilm_path, gpt2_dir, make_llama_tokenizer):
    """A tiny ``*ForSequenceClassification(num_labels=1)`` and its tokenizer (no pad id set)."""
    import transformers as tf

    torch.manual_seed(0)
    small = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_labels": 1}
    if style == "gpt2":
        tok = AutoTokenizer.from_pretrained(gpt2_dir)  # byte-level BPE, chat template, no pad
        config = tf.GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=MAX_POSITIONS
        )
        config.num_labels = 1
        return tf.GPT2ForSequenceClassification(config), tok
    if style == "llama":
        tok = make_llama_tokenizer()
        config = tf.LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_key_value_heads=1,
            max_position_embeddings=MAX_POSITIONS,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **small,
        )
        return tf.LlamaForSequenceClassification(config), tok
    tok = AutoTokenizer.from_pretrained(minilm_path)  # WordPiece, no EOS token
    tok.chat_template = BERT_TEMPLATE
    config = tf.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        **small,
    )
    return tf.BertForSequenceClassification(config), tok


#: style -> (rows trained on, RewardConfig extras)
STYLES = {
    "gpt2": ("plain", {}),
    "llama": ("conv", {}),
    "bert-eos": ("plain", {"eos_token": "[SEP]"}),  # TRL needs an EOS for plain rows
    "bert": ("conv", {}),  # no EOS token at all: TRL trains on chat rows only
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm_path, tiny_gpt2_dir, make_llama_tokenizer):
    """style -> (checkpoint directory, the RewardTrainer that wrote it), trained on demand."""
    cache: dict[str, tuple] = {}

    def get(style: str):
        if style not in cache:
            rows_kind, extra = STYLES[style]
            model, tok = _model_and_tokenizer(
                style.split("-")[0], minilm_path, tiny_gpt2_dir, make_llama_tokenizer
            )
            rows = CONV if rows_kind == "conv" else _plain(extra.get("eos_token", tok.eos_token))
            out = tmp_path_factory.mktemp(f"trl-{style}")
            args = trl.RewardConfig(
                output_dir=str(out),
                max_steps=2,
                per_device_train_batch_size=2,
                learning_rate=1e-2,
                report_to=[],
                save_strategy="no",
                logging_strategy="no",
                use_cpu=True,
                bf16=False,
                disable_tqdm=True,
                **extra,
            )
            trainer = trl.RewardTrainer(
                model=model,
                args=args,
                train_dataset=datasets.Dataset.from_list(rows * 2),
                processing_class=tok,
            )
            trainer.train()
            trainer.save_model(str(out))
            cache[style] = (out, trainer)
        return cache[style]

    return get


@torch.no_grad()
def _trl_scores(trainer, rows: list[dict]):
    """Chosen and rejected rewards the way the trainer computes them, one padded batch."""
    ds = trainer._prepare_dataset(
        datasets.Dataset.from_list(rows), trainer.processing_class, trainer.args, "score"
    )
    assert len(ds) == len(rows)
    examples = [ds[i] for i in range(len(ds))]
    batch = trainer.data_collator(examples)
    model = trainer.model.eval()
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    n = len(rows)
    ids = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    return rewards[:n, 0], rewards[n:, 0], ids


def _rows(style: str, kind: str, trainer) -> list[dict]:
    return CONV if kind == "conv" else _plain(trainer.processing_class.eos_token)


#: TRL cannot tokenise plain rows for a tokenizer without EOS ("bert"): see the next test
CASES = [(s, k) for s in STYLES for k in ("plain", "conv") if (s, k) != ("bert", "plain")]


@pytest.mark.parametrize(("style", "kind"), CASES)
def test_scores_equal_the_trainers_own(style, kind, trained):
    path, trainer = trained(style)
    rows = _rows(style, kind, trainer)
    chosen, rejected, trl_ids = _trl_scores(trainer, rows)
    prompts = [r["prompt"] for r in rows]
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]

    bb = Backbone.from_pretrained(path, max_length=MAX_POSITIONS)
    tokens = bb.tokenize(prompts * 2, responses)
    assert tokens.input_ids == [list(x) for x in trl_ids]  # TRL's tokens, exactly
    assert tokens.stats.n_prompt_truncated == tokens.stats.n_response_truncated == 0
    direct = bb.score_layer(bb.encode(tokens, max_tokens=64))[:, 0]  # several micro-batches
    torch.testing.assert_close(direct, torch.cat([chosen, rejected]), rtol=0, atol=1e-5)

    rm = RewardModel.from_backbone(path, uq="heads", n_members=2, max_length=MAX_POSITIONS)
    got_chosen = rm.score(prompts, [r["chosen"] for r in rows]).mean
    got_rejected = rm.score(prompts, [r["rejected"] for r in rows]).mean
    torch.testing.assert_close(got_chosen, chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_rejected, rejected, rtol=0, atol=1e-5)


def test_a_checkpoint_without_eos_scores_plain_rows_as_one_string(trained):
    path, trainer = trained("bert")
    tok = copy.deepcopy(trainer.processing_class)
    assert tok.eos_token is None
    with pytest.raises(TypeError, match="endswith"):  # TRL's own step for plain rows
        trainer._prepare_dataset(datasets.Dataset.from_list(PLAIN[:1]), tok, trainer.args, "x")
    rows = PLAIN[:3]
    bb = Backbone.from_pretrained(path, max_length=MAX_POSITIONS)
    tokens = bb.tokenize([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    texts = [r["prompt"] + r["chosen"] for r in rows]
    assert tokens.input_ids == [tok(t)["input_ids"] for t in texts]  # [CLS] … [SEP], one segment
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = trainer.model.eval()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits[:, 0]
    torch.testing.assert_close(bb.score_layer(bb.encode(tokens))[:, 0], ref, rtol=0, atol=1e-5)


def test_trl_sets_what_auq_relies_on(trained):
    """The saved checkpoint carries TRL's pad id, and the pad is EOS for pad-less tokenizers."""
    for style in ("gpt2", "llama"):
        path, trainer = trained(style)
        bb = Backbone.from_pretrained(path, max_length=MAX_POSITIONS)
        assert bb.model.config.pad_token_id == trainer.processing_class.eos_token_id
        assert bb.tokenizer.pad_token_id == bb.model.config.pad_token_id
        assert bb.text_encoder.eos_token == trainer.processing_class.eos_token
