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

import dataclasses
import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from auq.scoring.batching import collate, token_budget_batches
from auq.scoring.cache import FeatureCache, backbone_fingerprint, text_digests
from auq.scoring.distributed import (
    distributed_env,
    gather_items,
    init_distributed,
    shard_bounds,
)
from auq.scoring.engine import ScoringOptions, ScoringStats, Work, autocast_context, run_work
from auq.scoring.loading import (
    TOKENIZER_OPTIONS,
    BackboneLoadError,
    check_load_options,
    check_local_weights,
    position_limit,
    quiet_transformers,
)
from auq.scoring.pooling import last_non_pad_index, pool_hidden_states
from auq.scoring.prefix import (
    PrefixBatch,
    build_prefix_batch,
    cache_argument,
    output_cache,
    plan_prefix_groups,
    prefix_batch_tokens,
    prefix_batches,
    select_cache_rows,
    split_prefix_batch,
)
from auq.scoring.tokenization import TextEncoder, TokenizedTexts
from auq.utils.validation import check_choice

__all__ = [
    "POOLING_CHOICES",
    "Backbone",
    "is_reward_checkpoint",
    "model_inputs",
    "pool_hidden_states",
]

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
    scoring : ScoringOptions or dict, optional
        How the scoring engine runs (:class:`~auq.scoring.ScoringOptions`); kept as
        :attr:`scoring` and changeable at any time.

    Attributes
    ----------
    scoring : ScoringOptions
    last_scoring_stats : ScoringStats or None
        What the last :meth:`encode` did (micro-batches, tokens, cache hits, retries).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str = "auto",
        max_length: int = 256,
        name_or_path: str = "",
        scoring: ScoringOptions | dict[str, Any] | None = None,
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
        self.scoring = ScoringOptions.coerce(scoring)
        self.last_scoring_stats: ScoringStats | None = None
        self._captured: Tensor | None = None
        self._compiled: tuple[nn.Module, nn.Module] | None = None
        self._cache: tuple[tuple, FeatureCache] | None = None
        self._fingerprint_memo: tuple[tuple, str] | None = None
        self._positions_from_ids = any(
            name.endswith("position_embeddings")
            and isinstance(m, nn.Embedding)
            and m.padding_idx is not None
            for name, m in model.named_modules()
        )
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
        scoring: ScoringOptions | dict[str, Any] | None = None,
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
        scoring : ScoringOptions or dict, optional
            Scoring-engine options (see the class).
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
            scoring=scoring,
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

    @property
    def rows_per_item(self) -> int:
        """Rows one item takes in a forward (K members, T passes; 1 for one model)."""
        return 1

    def _capture_score_input(self, module, inputs, output) -> None:
        self._captured = inputs[0]

    def _check_left_padding(self) -> None:
        """Left padding needs positions that skip the padding; refuse a model without them."""
        takes = "position_ids" in inspect.signature(self.model.forward).parameters
        if not (takes or self._positions_from_ids):
            raise ValueError(
                f"padding_side='left' needs position ids, and {type(self.model).__name__}."
                "forward takes none (its tokens would move to other positions); use "
                "padding_side='right'"
            )

    def _runner(self) -> nn.Module:
        """The model as called: compiled on first use when ``scoring.compile`` is set."""
        if not self.scoring.compile:
            return self.model
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, torch.compile(self.model, dynamic=True))
        return self._compiled[1]

    def _hidden(self, kwargs: dict[str, Any]) -> Tensor:
        """Per-token states the features are read from: (B, L, d), or (B, d) after a pooler.

        The score layer's input for reward checkpoints (captured by a hook), else the
        last hidden state.
        """
        if self.score_layer is None:
            return self._runner()(**kwargs).last_hidden_state
        self._runner()(**kwargs)
        captured, self._captured = self._captured, None
        return captured

    def _read(self, hidden: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """One vector per sequence, (B, d), from :meth:`_hidden`'s output."""
        if self.score_layer is None:
            return pool_hidden_states(hidden, attention_mask, self.pooling)
        if hidden.ndim == 2:  # (B, d): after the architecture's pooler
            return hidden
        pad_id = self.model.config.get_text_config().pad_token_id  # a decoder: as HF reads
        last = last_non_pad_index(input_ids, pad_id, attention_mask)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Features of a padded batch.

        Parameters
        ----------
        input_ids, attention_mask, token_type_ids, position_ids : Tensor, shape (B, L)
            ``position_ids`` only with left padding (:func:`~auq.scoring.collate`).

        Returns
        -------
        Tensor, shape (B, d), float32.
        """
        kwargs = model_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        return self._read(self._hidden(kwargs), input_ids, attention_mask).float()

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

    # -- prefix sharing -----------------------------------------------------------
    def prefix_sharing_unsupported(self) -> str | None:
        """Why this backbone cannot share prompt prefixes (None when it can)."""
        config = self.model.config.get_text_config()
        if self.is_encoder or getattr(config, "is_encoder_decoder", False):
            return "the backbone is not a causal decoder (every token sees the whole text)"
        if self.pooling not in ("last", "checkpoint"):
            return f"pooling={self.pooling!r} reads every token, not the last one"
        if self.scoring.compile:
            return "scoring.compile=True (the compiled graph is not given a cache)"
        if cache_argument(self.model) is None:
            return f"{type(self.model).__name__}.forward takes no key/value cache"
        return None

    def read_positions(self, tokenized: TokenizedTexts) -> np.ndarray:
        """Where each item's features are read (its last token, or HF's score position), (N,)."""
        flat, offsets, _ = tokenized.packed
        last = offsets[1:] - offsets[:-1] - 1
        if self.score_layer is None:
            return last
        pad_id = self.model.config.get_text_config().pad_token_id
        if pad_id is None:
            return last
        keep = np.flatnonzero(flat != pad_id)  # rightmost non-pad token of each item
        item_of = np.searchsorted(offsets, keep, side="right") - 1
        positions = np.zeros(len(tokenized), dtype=np.int64)
        np.maximum.at(positions, item_of, keep - offsets[item_of])
        return positions

    def prefill(self, prefix: dict[str, Tensor]) -> Any:
        """Run G prefixes with the model's cache on; returns the cache (G rows)."""
        out = self.model(**prefix, use_cache=True)
        self._captured = None
        return output_cache(out)

    def forward_shared_prefix(self, batch: PrefixBatch) -> Tensor:
        """Features of continuations of shared prefixes, (n, d) — see :mod:`auq.scoring.prefix`."""
        cache = select_cache_rows(self.prefill(batch.prefix), batch.prefix_rows)
        suffix = batch.suffix
        kwargs = {
            "input_ids": suffix["input_ids"],
            "attention_mask": batch.model_mask,
            "position_ids": suffix["position_ids"],
            cache_argument(self.model): cache,
        }
        hidden = self._hidden(kwargs)  # (n, S, d): the continuation's positions only
        return self._read(hidden, suffix["input_ids"], suffix["attention_mask"]).float()

    # -- the scoring engine ---------------------------------------------------------
    @property
    def feature_cacheable(self) -> bool:
        """Whether features can be cached: every weight is frozen."""
        return not any(p.requires_grad for p in self.parameters())

    def feature_cache(self, options: ScoringOptions | None = None) -> FeatureCache | None:
        """The feature cache under ``options`` (default :attr:`scoring`); None when off."""
        opts = options or self.scoring
        if not opts.feature_cache or not self.feature_cacheable:
            return None
        key = (opts.feature_cache_bytes, opts.feature_cache_dir)
        if self._cache is None or self._cache[0] != key:
            cache = FeatureCache(opts.feature_cache_bytes, opts.feature_cache_dir)
            self._cache = (key, cache)
        return self._cache[1]

    def _fingerprint(self, precision: str) -> str:
        versions = tuple(getattr(p, "_version", None) for p in self.parameters())
        key = (versions, precision, self.device.type)
        if self._fingerprint_memo is None or self._fingerprint_memo[0] != key:
            settings = (
                type(self).__name__,
                self.name_or_path,
                self.pooling,
                precision,
                self.device.type,
                self.model.config.to_json_string(),
                *sorted(self.feature_settings().items()),
            )
            self._fingerprint_memo = (key, backbone_fingerprint(self, settings))
        return self._fingerprint_memo[1]

    def feature_settings(self) -> dict[str, Any]:
        """Settings besides the weights that change features (member backbones add theirs)."""
        return {}

    @torch.no_grad()  # results are normal tensors: heads may train on them
    def encode(
        self,
        tokenized: TokenizedTexts,
        *,
        groups: np.ndarray | None = None,
        progress: bool | None = None,
        description: str = "features",
        distributed: bool = False,
        **options: Any,
    ) -> Tensor:
        """Features of every tokenised item through the scoring engine, in the caller's order.

        Parameters
        ----------
        tokenized : TokenizedTexts
            N items.
        groups : int array, shape (N,), optional
            Items with the same label share a prompt (:func:`~auq.scoring.prompt_groups`):
            with prefix sharing on, their common token prefix runs once (causal decoders).
        progress : bool or None
            Progress bar; None shows it only on a terminal or in a notebook.
        description : str
        distributed : bool
            Inside processes started by ``torchrun`` or ``accelerate launch``: every
            rank passes all N items, scores its contiguous slice, and receives all
            N features in order (:mod:`auq.scoring.distributed`).
        **options
            :class:`~auq.scoring.ScoringOptions` fields for this call (``max_tokens``,
            ``batch_size``, ``prefix_sharing``, ...; None values keep :attr:`scoring`'s).

        Returns
        -------
        Tensor, shape (N, d) — or (S, N, d) for backbone-level ensembles — float32,
        on the backbone's device. ``last_scoring_stats`` says what the call did.
        """
        if "compile" in options:
            raise TypeError(
                "compile is a setting of the model, not of one call: set backbone.scoring.compile"
            )
        opts = self.scoring.replace(**options)
        was_training = self.training
        self.eval()
        try:
            if not distributed or init_distributed()[1] == 1:
                return self._encode(tokenized, groups, opts, progress, description)
            return self._encode_shard(tokenized, groups, opts, progress, description)
        finally:
            self.train(was_training)

    def _encode_shard(self, tokenized, groups, opts, progress, description) -> Tensor:
        """This rank's slice through the engine, then every rank's slices gathered in order."""
        rank, world, _ = distributed_env()
        start, stop = shard_bounds(len(tokenized), rank, world)
        mine = np.arange(start, stop)
        if len(mine):
            local_groups = None if groups is None else np.asarray(groups)[mine]
            local = self._encode(tokenized.subset(mine), local_groups, opts, progress, description)
        else:  # more ranks than items: this one only takes part in the gather
            shape = (*self.feature_batch_shape, 0, self.hidden_size)
            local = torch.zeros(shape, device=self.device)
            self.last_scoring_stats = ScoringStats(precision=opts.precision)
        return gather_items(local, len(tokenized))

    @property
    def feature_batch_shape(self) -> tuple[int, ...]:
        """Leading axes of the features before (N, d): () here, (S,) for member backbones."""
        return ()

    def _encode(self, tokenized, groups, opts: ScoringOptions, progress, description) -> Tensor:
        device = self.device
        weight_dtype = next(self.model.parameters()).dtype
        _, precision = autocast_context(opts.precision, device, weight_dtype)
        cache = self.feature_cache(opts)
        misses = np.arange(len(tokenized))
        cached = None
        if cache is not None:
            fingerprint = self._fingerprint(precision)
            digests = text_digests(tokenized)
            hits, cached = cache.lookup(fingerprint, digests)
            misses = np.flatnonzero(~hits)
        n_cached = len(tokenized) - len(misses)
        stats = ScoringStats(n_items=len(tokenized), n_cached=n_cached, precision=precision)
        fresh = None
        if len(misses):
            subset = tokenized if len(misses) == len(tokenized) else tokenized.subset(misses)
            sub_groups = None if groups is None else np.asarray(groups)[misses]
            works = self._plan(subset, sub_groups, opts)
            fresh, run_stats = run_work(
                works,
                len(subset),
                device=device,
                precision=opts.precision,
                weight_dtype=weight_dtype,
                oom_backoff=opts.oom_backoff,
                progress=progress,
                description=description,
            )
            stats = dataclasses.replace(run_stats, n_items=stats.n_items, n_cached=stats.n_cached)
            if cache is not None:
                cache.store(fingerprint, [digests[i] for i in misses], fresh)
        self.last_scoring_stats = stats
        if cached is None:
            return fresh
        cached = cached.to(device)
        if fresh is None:
            return cached
        out = fresh.new_empty((*fresh.shape[:-2], len(tokenized), fresh.shape[-1]))
        out[..., torch.as_tensor(misses, device=device), :] = fresh
        out[..., torch.as_tensor(np.flatnonzero(hits), device=device), :] = cached
        return out

    def _plan(
        self, tokenized: TokenizedTexts, groups: np.ndarray | None, opts: ScoringOptions
    ) -> list[Work]:
        """Micro-batches for the engine: shared-prefix groups first, the rest length-bucketed."""
        rest = np.arange(len(tokenized))
        works: list[Work] = []
        reason = self.prefix_sharing_unsupported() if opts.prefix_sharing else None
        if opts.prefix_sharing is True and reason is not None:
            raise ValueError(f"prefix_sharing=True is not possible here: {reason}")
        if groups is not None and opts.prefix_sharing and reason is None:
            labels = np.unique(groups, return_inverse=True)[1]
            plan = plan_prefix_groups(
                tokenized,
                labels,
                self.read_positions(tokenized),
                min_prefix_tokens=opts.min_prefix_tokens,
            )
            rest = plan.unshared
            for part_groups, part_lengths in prefix_batches(
                tokenized,
                plan,
                max_tokens=opts.max_tokens,
                max_batch_size=opts.batch_size,
                rows_per_item=self.rows_per_item,
            ):
                works.append(self._prefix_work(tokenized, part_groups, part_lengths))
        lengths = tokenized.lengths
        for idx in token_budget_batches(
            lengths[rest],
            max_tokens=opts.max_tokens,
            max_batch_size=opts.batch_size,
            rows_per_item=self.rows_per_item,
            bucketing=opts.bucketing,
            max_padding=opts.max_padding,
        ):
            works.append(self._plain_work(tokenized, rest[idx], opts.padding_side))
        return works

    def _plain_work(self, tokenized: TokenizedTexts, items: np.ndarray, padding_side: str) -> Work:
        lengths = tokenized.lengths[items]
        if padding_side == "left":
            self._check_left_padding()

        def run() -> Tensor:
            batch = collate(
                tokenized,
                items,
                pad_token_id=self.tokenizer.pad_token_id,
                device=self.device,
                padding_side=padding_side,
            )
            if self._positions_from_ids:  # RoBERTa-style: positions skip padding by themselves
                batch.pop("position_ids", None)
            return self(**batch)

        def split() -> list[Work]:
            if len(items) < 2:
                return []
            half = len(items) // 2
            return [
                self._plain_work(tokenized, items[:half], padding_side),
                self._plain_work(tokenized, items[half:], padding_side),
            ]

        return Work(
            items=items,
            padded_tokens=self.rows_per_item * len(items) * int(lengths.max()),
            real_tokens=int(lengths.sum()),
            run=run,
            split=split,
        )

    def _prefix_work(self, tokenized, groups: list[np.ndarray], lengths: list[int]) -> Work:
        padded, real = prefix_batch_tokens(tokenized, groups, lengths)

        def run() -> Tensor:  # collated when it runs: planned works hold no tensors
            batch = build_prefix_batch(
                tokenized,
                groups,
                lengths,
                pad_token_id=self.tokenizer.pad_token_id,
                device=self.device,
            )
            return self.forward_shared_prefix(batch)

        def split() -> list[Work]:
            halves = split_prefix_batch(groups, lengths)
            return [self._prefix_work(tokenized, g, p) for g, p in halves]

        items = np.concatenate(groups)
        return Work(
            items=items,
            padded_tokens=self.rows_per_item * padded,
            real_tokens=real,
            run=run,
            split=split,
            n_prefix_shared=len(items),
            n_prefix_groups=len(groups),
        )


def model_inputs(
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None = None,
    position_ids: Tensor | None = None,
) -> dict[str, Tensor]:
    """The keyword arguments of a Hugging Face forward (optional ones only when given)."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return kwargs


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
