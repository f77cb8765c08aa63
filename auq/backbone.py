"""Any Hugging Face backbone as a feature extractor φ(prompt, response) → (d,).

Two ways in:

* a plain ``AutoModel`` (encoder or decoder), pooled to one vector per sequence
  with the attention mask: the last real token for causal models, mean (or CLS)
  for encoders (:mod:`auq.scoring.pooling`);
* an existing reward checkpoint in TRL's format
  (``AutoModelForSequenceClassification`` with ``num_labels=1``): the features
  are the *input of its score layer*, captured with a forward hook and read where
  Hugging Face reads the score — the rightmost token that is not
  ``config.pad_token_id`` for decoders, the pooler output for BERT-style encoders —
  so an auq head initialised from that layer reproduces the checkpoint's reward
  exactly, whatever pooler or classifier block the architecture puts in front of it.

Texts are tokenised the way each kind expects (reward checkpoints exactly as
TRL's ``RewardTrainer`` did in training); the format per kind is documented in
:mod:`auq.scoring.tokenization`. Loading (:meth:`Backbone.from_pretrained`) takes
safetensors weights only and passes Hugging Face's loading options through
(:mod:`auq.scoring.loading`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from auq.scoring.batching import collate, token_budget_batches
from auq.scoring.loading import (
    TOKENIZER_OPTIONS,
    BackboneLoadError,
    check_load_options,
    check_local_weights,
    position_limit,
    quiet_transformers,
)
from auq.scoring.pooling import last_non_pad_index, pool_hidden_states
from auq.scoring.tokenization import TextEncoder, TokenizedTexts
from auq.utils.console import progress_bar
from auq.utils.validation import check_choice

__all__ = ["POOLING_CHOICES", "Backbone", "is_reward_checkpoint", "pool_hidden_states"]

POOLING_CHOICES = ("auto", "last", "mean", "cls")


def is_reward_checkpoint(config) -> bool:
    """True for a sequence-classification config with one label (TRL reward model)."""
    archs = getattr(config, "architectures", None) or []
    return config.num_labels == 1 and any(a.endswith("ForSequenceClassification") for a in archs)


def _is_encoder(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        config, "is_decoder", False
    )


def _find_score_layer(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` with one output: the score layer of a reward checkpoint."""
    candidates = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear(…, 1) score layer; is it a reward model?"
        )
    return candidates[-1]


def _check_max_length(max_length: int, model: nn.Module) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4:
        raise ValueError(f"max_length must be an integer >= 4, got {max_length!r}")
    limit = position_limit(model)
    if limit is not None and max_length > limit[0]:
        kind = model.config.model_type
        raise ValueError(
            f"max_length={max_length} is longer than the backbone's position limit of "
            f"{limit[0]} tokens ({kind}: {limit[1]}); use max_length <= {limit[0]}"
        )


def _fill_pad_tokens(model: nn.Module, tokenizer, reward_checkpoint: bool) -> None:
    """Give the tokenizer (and a reward checkpoint's config) a pad token, as TRL does."""
    config = model.config.get_text_config()
    config_pad = config.pad_token_id if reward_checkpoint else None
    if tokenizer.pad_token_id is None:
        if config_pad is not None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config_pad)
        elif tokenizer.eos_token is not None or tokenizer.unk_token is not None:
            # decoders often have no pad token; right padding + masks make any id safe
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        else:
            raise ValueError(
                f"the tokenizer of {type(model).__name__} has no pad, EOS or unknown token to "
                "pad batches with; set tokenizer.pad_token before building the Backbone"
            )
    if reward_checkpoint and config_pad is None:
        # HF's *ForSequenceClassification finds the scored token with config.pad_token_id
        # (batches > 1 fail without it); TRL sets it from the tokenizer's pad, or EOS
        config.pad_token_id = tokenizer.pad_token_id


class Backbone(nn.Module):
    """A Hugging Face model plus tokenizer that turns texts into features (N, d).

    Parameters
    ----------
    model : PreTrainedModel
        ``AutoModel`` output, or a sequence-classification reward checkpoint.
    tokenizer : PreTrainedTokenizerBase
        A fast tokenizer. A missing pad token is filled in (EOS or unknown token);
        a reward checkpoint without ``config.pad_token_id`` gets the tokenizer's
        pad (or EOS) there, as TRL's trainer sets it.
    pooling : {"auto", "last", "mean", "cls"}
        Plain backbones: "auto" picks "last" for decoders and "mean" for encoders.
        Reward checkpoints read their score layer's input where the architecture
        does; only "auto" applies (``pooling`` then reads ``"checkpoint"``).
    max_length : int
        Longest tokenised (prompt, response), at most the model's position limit;
        see :mod:`auq.scoring.tokenization`.
    name_or_path : str
        Where the model came from (kept in saved configs).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str = "auto",
        max_length: int = 256,
        name_or_path: str = "",
    ) -> None:
        super().__init__()
        check_choice("pooling", pooling, POOLING_CHOICES)
        config = model.config
        self.is_reward_checkpoint = is_reward_checkpoint(config)
        if self.is_reward_checkpoint and pooling != "auto":
            raise ValueError(
                f"pooling={pooling!r} does not apply to a reward checkpoint "
                f"({type(model).__name__}): its score is read where the architecture reads "
                "it; use pooling='auto'"
            )
        _check_max_length(max_length, model)
        self.model = model
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.is_encoder = _is_encoder(config)
        if self.is_reward_checkpoint:
            self.pooling = "checkpoint"
        elif pooling == "auto":
            self.pooling = "mean" if self.is_encoder else "last"
        else:
            self.pooling = pooling
        _fill_pad_tokens(model, tokenizer, self.is_reward_checkpoint)
        self.text_encoder = TextEncoder(
            tokenizer,
            max_length=max_length,
            pair_encoding=self.is_encoder and not self.is_reward_checkpoint,
            append_eos=self.is_reward_checkpoint and tokenizer.eos_token is not None,
        )
        self._captured: Tensor | None = None
        self.score_layer: nn.Linear | None = None
        if self.is_reward_checkpoint:
            self.score_layer = _find_score_layer(model)
            self.score_layer.register_forward_hook(self._capture_score_input)
        self.eval()  # inference by default, like from_pretrained; fit() switches to train

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        pooling: str = "auto",
        max_length: int = 256,
        dtype: torch.dtype | str | None = None,
        **load_options: Any,
    ) -> Backbone:
        """Load a backbone by hub name or local path (reward checkpoints detected).

        Parameters
        ----------
        name_or_path : str or Path
            A local directory written by ``save_pretrained`` (safetensors weights),
            or a hub name (``HF_HUB_OFFLINE=1`` uses the local cache only).
        pooling, max_length : see the class.
        dtype : torch.dtype or "auto", optional
            Weights dtype, float32 by default whatever the checkpoint stores (e.g.
            ``torch.bfloat16`` on GPU); heads always compute in float32.
        **load_options
            Hugging Face loading options: ``revision``, ``trust_remote_code`` (model
            and tokenizer), ``attn_implementation``, ``device_map`` (model). An
            option naming an attribute of the model's config overrides it (e.g.
            ``hidden_dropout_prob=0.2``); anything else is refused.

        Raises
        ------
        BackboneLoadError (an OSError)
            Nothing loadable at ``name_or_path``, or weights only in pickle files.
        """
        from transformers import AutoModel, AutoModelForSequenceClassification

        check_choice("pooling", pooling, POOLING_CHOICES)
        name = str(name_or_path)
        shared = {k: load_options[k] for k in TOKENIZER_OPTIONS if k in load_options}
        with quiet_transformers():
            config = _load_config(name, shared)
            options, overrides = check_load_options(load_options, config)
            for key, value in overrides.items():
                setattr(config, key, value)
            check_local_weights(name)
            auto = AutoModelForSequenceClassification if is_reward_checkpoint(config) else AutoModel
            try:
                model, info = auto.from_pretrained(
                    name,
                    config=config,
                    dtype=torch.float32 if dtype is None else dtype,
                    use_safetensors=True,
                    output_loading_info=True,
                    **options,
                )
            except OSError as err:
                if "safetensors" not in str(err):
                    raise BackboneLoadError(
                        f"could not load the weights of {name!r}: {err}"
                    ) from err
                raise BackboneLoadError(
                    f"{name!r} has no safetensors weights (model.safetensors); auq loads "
                    "safetensors only (loading a pickle can run code). Convert the checkpoint "
                    "once where you trust its source (load it with transformers and "
                    "save_pretrained() it), then load the converted directory"
                ) from None
            tokenizer = _load_tokenizer(name, shared)
        missing = list(info.get("missing_keys", ()))
        if missing:
            warnings.warn(
                f"{name}: {len(missing)} weight(s) of {type(model).__name__} are not in the "
                f"checkpoint and start random: {', '.join(sorted(missing)[:5])}"
                + (", ..." if len(missing) > 5 else ""),
                stacklevel=2,
            )
        return cls(
            model.eval(),
            tokenizer,
            pooling=pooling,
            max_length=max_length,
            name_or_path=name,
        )

    # -- features -----------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """Feature dimension d."""
        if self.score_layer is not None:
            return self.score_layer.in_features
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _capture_score_input(self, module, inputs, output) -> None:
        self._captured = inputs[0]

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Features of a padded batch.

        Parameters
        ----------
        input_ids, attention_mask, token_type_ids : Tensor, shape (B, L)

        Returns
        -------
        Tensor, shape (B, d), float32.
        """
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.score_layer is not None:
            self.model(**kwargs)
            captured, self._captured = self._captured, None
            if captured.ndim == 3:  # (B, L, d): a decoder scores every position
                pad_id = self.model.config.get_text_config().pad_token_id
                last = last_non_pad_index(input_ids, pad_id, attention_mask)  # (B,) as HF reads
                phi = captured[torch.arange(captured.shape[0], device=captured.device), last]
            else:  # (B, d): after the architecture's pooler
                phi = captured
        else:
            hidden = self.model(**kwargs).last_hidden_state  # (B, L, d)
            phi = pool_hidden_states(hidden, attention_mask, self.pooling)
        return phi.float()

    def tokenize(
        self,
        prompts: Sequence[Any],
        responses: Sequence[Any],
        *,
        add_special_tokens: bool = True,
    ) -> TokenizedTexts:
        """Token ids of N (prompt, response) rows in this backbone's text format.

        Parameters
        ----------
        prompts, responses : sequences of N items
            Raw rows: each a str, or a list of ``{"role", "content"}`` messages
            (rendered with the tokenizer's chat template where it has one); see
            :mod:`auq.scoring.tokenization` for the format per backbone kind.
        add_special_tokens : bool
            False only for plain-text rows the caller already rendered with a chat
            template (the joined text is tokenised as it is).

        Returns
        -------
        TokenizedTexts
            Ids, segment ids where used, and ``stats`` (:class:`~auq.types.TruncationStats`).
        """
        return self.text_encoder.encode(
            list(prompts), list(responses), add_special_tokens=add_special_tokens
        )

    def features_of(self, tokenized: TokenizedTexts, indices: np.ndarray | list[int]) -> Tensor:
        """Features of selected tokenised items (gradients flow if the model trains), (b, d)."""
        batch = collate(
            tokenized, indices, pad_token_id=self.tokenizer.pad_token_id, device=self.device
        )
        return self(**batch)

    @torch.no_grad()  # not inference_mode: heads train on these features
    def encode(
        self,
        tokenized: TokenizedTexts,
        *,
        max_tokens: int = 16384,
        max_batch_size: int = 256,
        progress: bool | None = None,
        description: str = "features",
    ) -> Tensor:
        """Features of every tokenised item, length-bucketed, in the caller's order.

        Parameters
        ----------
        tokenized : TokenizedTexts
            N items.
        max_tokens : int
            Padded tokens per micro-batch.
        max_batch_size : int
            Rows per micro-batch.
        progress : bool or None
            Progress bar; None shows it only on a terminal or in a notebook.

        Returns
        -------
        Tensor, shape (N, d) — or (K, N, d) for backbone-level ensembles — float32,
        on the backbone's device.
        """
        was_training = self.training
        self.eval()
        out = None
        batches = token_budget_batches(
            tokenized.lengths, max_tokens=max_tokens, max_batch_size=max_batch_size
        )
        for idx in progress_bar(batches, desc=description, enabled=progress):
            phi = self.features_of(tokenized, idx)  # (b, d), or (K, b, d) for member ensembles
            if out is None:
                out = phi.new_empty((*phi.shape[:-2], len(tokenized), phi.shape[-1]))
            out[..., torch.as_tensor(idx, device=phi.device), :] = phi
        self.train(was_training)
        return out


def _load_config(name: str, options: dict[str, Any]):
    from transformers import AutoConfig

    path = Path(name)
    if path.is_dir() and not (path / "config.json").is_file():
        raise BackboneLoadError(
            f"could not load a Hugging Face model from {name!r}: the directory has no "
            "config.json; give a directory written by save_pretrained() (config.json, "
            "model.safetensors, tokenizer files) or a hub name"
        )
    try:
        return AutoConfig.from_pretrained(name, **options)
    except (OSError, ValueError) as err:
        where = (
            "no such local directory, and no hub model of that name in reach"
            if not path.exists()
            else "its config.json could not be read"
        )
        raise BackboneLoadError(
            f"could not load a Hugging Face model from {name!r}: {where}. Give a local "
            "directory with config.json and model.safetensors, or a hub name available "
            f"offline (HF_HUB_OFFLINE=1 uses the local cache only). Original error: {err}"
        ) from err


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _load_tokenizer(name: str, options: dict[str, Any]):
    from transformers import AutoTokenizer

    fix = (
        "save the model's tokenizer next to it (tokenizer.save_pretrained(path) writes "
        "tokenizer.json and tokenizer_config.json)"
    )
    path = Path(name)
    # transformers would build an empty tokenizer (every word unknown) from config.json alone
    if path.is_dir() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise BackboneLoadError(
            f"could not load a tokenizer from {name!r}: it has no tokenizer "
            f"files ({', '.join(_TOKENIZER_FILES[:2])}, ...); {fix}"
        )
    try:
        return AutoTokenizer.from_pretrained(name, **options)
    except (OSError, ValueError, TypeError) as err:
        raise BackboneLoadError(
            f"could not load a tokenizer from {name!r}: {fix}. Original error: {err}"
        ) from err
