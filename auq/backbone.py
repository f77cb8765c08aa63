"""Any Hugging Face backbone as a feature extractor φ(prompt, response) → (d,).

Two ways in:

* a plain ``AutoModel`` (encoder or decoder), pooled to one vector per sequence:
  the last non-pad token for causal models, mean (or CLS) for encoders;
* an existing reward checkpoint in TRL's format
  (``AutoModelForSequenceClassification`` with ``num_labels=1``): the features
  are the *input of its score layer*, captured with a forward hook, so an auq
  head initialised from that layer reproduces the checkpoint's reward exactly,
  whatever pooler or classifier block the architecture puts in front of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from auq.scoring.batching import TextEncoder, TokenizedTexts, collate, token_budget_batches
from auq.utils.validation import check_choice

__all__ = ["POOLING_CHOICES", "Backbone", "is_reward_checkpoint"]

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


def pool_hidden_states(hidden: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """(B, L, d), (B, L) → (B, d)."""
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if pooling == "cls":
        return hidden[:, 0]
    # last non-pad token; correct for left or right padding
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(-1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class Backbone(nn.Module):
    """A Hugging Face model plus tokenizer that turns texts into features (N, d).

    Parameters
    ----------
    model : PreTrainedModel
        ``AutoModel`` output, or a sequence-classification reward checkpoint.
    tokenizer : PreTrainedTokenizerBase
    pooling : {"auto", "last", "mean", "cls"}
        "auto" picks "last" for decoders and "mean" for encoders.
    max_length : int
        Longest tokenised (prompt, response), see :mod:`auq.scoring.batching`.
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
        self.model = model
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        config = model.config
        self.is_encoder = _is_encoder(config)
        self.pooling = ("mean" if self.is_encoder else "last") if pooling == "auto" else pooling
        self.is_reward_checkpoint = is_reward_checkpoint(config)
        if tokenizer.pad_token_id is None:
            # decoders often have no pad token; right padding + masks make any id safe
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.text_encoder = TextEncoder(
            tokenizer, max_length=max_length, pair_encoding=self.is_encoder
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
        dtype: torch.dtype | None = None,
        **model_kwargs: Any,
    ) -> Backbone:
        """Load a backbone by hub name or local path (reward checkpoints detected).

        Parameters
        ----------
        name_or_path : str or Path
        pooling, max_length : see the class.
        dtype : torch.dtype, optional
            Weights dtype, float32 by default whatever the checkpoint stores (e.g.
            ``torch.bfloat16`` on GPU); heads always compute in float32.
        **model_kwargs
            Passed to ``from_pretrained`` (``revision``, ``attn_implementation``, ...).
        """
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        name_or_path = str(name_or_path)
        try:
            config = AutoConfig.from_pretrained(name_or_path)
        except OSError as err:
            raise OSError(
                f"could not load a Hugging Face model from {name_or_path!r}: give a local "
                "directory with config.json, or a hub name available offline (HF_HUB_OFFLINE=1 "
                f"uses the local cache only). Original error: {err}"
            ) from err
        # float32 unless asked otherwise (not the checkpoint's storage dtype)
        model_kwargs["dtype"] = torch.float32 if dtype is None else dtype
        auto = AutoModelForSequenceClassification if is_reward_checkpoint(config) else AutoModel
        model = auto.from_pretrained(name_or_path, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        return cls(
            model.eval(),
            tokenizer,
            pooling=pooling,
            max_length=max_length,
            name_or_path=name_or_path,
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
            # (B, L, d) for decoders that score every position, (B, d) after a pooler
            phi = (
                pool_hidden_states(captured, attention_mask, "last")
                if captured.ndim == 3
                else captured
            )
        else:
            hidden = self.model(**kwargs).last_hidden_state  # (B, L, d)
            phi = pool_hidden_states(hidden, attention_mask, self.pooling)
        return phi.float()

    def tokenize(
        self, prompts: list[str], responses: list[str], *, add_special_tokens: bool = True
    ) -> TokenizedTexts:
        """Token ids of N (prompt, response) texts under the truncation policy."""
        return self.text_encoder.encode(prompts, responses, add_special_tokens=add_special_tokens)

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
        progress: bool = False,
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
        for idx in tqdm(batches, desc=description, disable=not progress, leave=False):
            phi = self.features_of(tokenized, idx)  # (b, d), or (K, b, d) for member ensembles
            if out is None:
                out = phi.new_empty((*phi.shape[:-2], len(tokenized), phi.shape[-1]))
            out[..., torch.as_tensor(idx, device=phi.device), :] = phi
        self.train(was_training)
        return out
