"""A word-level tokenizer for the testbed's texts, built offline with the ``tokenizers`` library.

Every token is a word, a single punctuation mark, or a run of whitespace, and a word
carries the whitespace before it (``" rice"``), as in GPT-2. Decoding concatenates
the tokens, so ``decode(encode(text)) == text`` exactly for any text whose pieces are
in the vocabulary. Each word enters the vocabulary both bare and after one space
(``"rice"`` and ``" rice"``), so a known word is known at the start of a text too.
A piece outside the vocabulary becomes ``<unk>``; nothing raises.

The returned tokenizer is a :class:`~transformers.PreTrainedTokenizerFast` that
prepends ``<bos>`` to every encoded text, pads on the left (ready for batched
generation) and saves / loads with ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

__all__ = ["BOS", "EOS", "PAD", "SPECIAL_TOKENS", "UNK", "build_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: ids 0..3, in this order
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

#: a word (letters/digits) or one other visible character, each with the whitespace before it;
#: whitespace that no such piece follows is a token of its own
_PIECE = r"\s*[^\W_]+|\s*[^\s\w]|\s*_|\s+"


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(_PIECE), behavior="isolated")


def build_tokenizer(
    texts: Iterable[str],
    *,
    min_frequency: int = 1,
    max_vocab: int | None = None,
    model_max_length: int = 128,
):
    """Train a word-level tokenizer on ``texts``.

    Parameters
    ----------
    texts : iterable of str
        The corpus (prompts and responses); every piece seen ``min_frequency`` times
        or more enters the vocabulary.
    min_frequency : int
        Pieces seen fewer times map to ``<unk>``.
    max_vocab : int, optional
        Keep at most this many tokens (the special tokens included), the most frequent
        first; ``None`` keeps every piece.
    model_max_length : int
        The longest sequence the model takes (its ``n_positions``).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``bos``/``eos``/``pad``/``unk`` tokens (ids 0–3: pad, bos, eos, unk),
        ``padding_side="left"`` and ``<bos>`` prepended when ``add_special_tokens``.

    Raises
    ------
    ValueError
        If ``texts`` is empty, or an option is out of range.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    if max_vocab is not None and (
        not isinstance(max_vocab, int) or max_vocab <= len(SPECIAL_TOKENS)
    ):
        raise ValueError(
            f"max_vocab must be None or an integer > {len(SPECIAL_TOKENS)}, got {max_vocab!r}"
        )
    split = _pre_tokenizer()
    counts: Counter[str] = Counter()
    n_texts = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
        counts.update(piece for piece, _ in split.pre_tokenize_str(text))
        n_texts += 1
    if not n_texts:
        raise ValueError("build_tokenizer needs at least one text, got none")
    # a word seen only after a space is still known bare (and vice versa); the twin gets the
    # count of the form that was seen, so it ranks beside it
    twins: Counter[str] = Counter()
    for piece, count in counts.items():
        core = piece.lstrip()
        if core[:1].isalnum():
            for twin in (core, " " + core):
                if twin not in counts:
                    twins[twin] = max(twins[twin], count)
    counts.update(twins)
    kept = sorted(
        (p for p, c in counts.items() if c >= min_frequency), key=lambda p: (-counts[p], p)
    )
    if max_vocab is not None:
        kept = kept[: max_vocab - len(SPECIAL_TOKENS)]
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *kept))}

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = split
    core.decoder = decoders.Fuse()  # concatenate: the whitespace lives inside the tokens
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
