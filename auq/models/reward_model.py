"""``RewardModel``: a Hugging Face backbone plus an uncertainty layer.

::

    rm = auq.RewardModel.from_backbone("path/or/name", uq="heads", n_members=8)
    rm.fit(train_ds, eval_dataset=val_ds)
    pp = rm.predict(test_ds)              # PreferencePrediction, margins (K, B)
    rp = rm.score(prompts, responses)     # RewardPrediction, rewards (K, N)
    rm.save_pretrained("rm"); rm = auq.RewardModel.from_pretrained("rm")

With a frozen backbone (the default) features are computed once per data set and
every epoch and every member reuses them; ``finetune="full"`` or ``"lora"``
trains the backbone together with the heads. The head is reached only through
its contract (:class:`~auq.heads.PreferenceHead`): no method is special-cased here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from auq.backbone import Backbone
from auq.data import PreferenceDataset, as_preference_dataset
from auq.heads.base import PreferenceHead
from auq.heads.fitting import FitConfig, FitHistory
from auq.members.base import MemberBackbone
from auq.models.checkpoints import load_reward_model, save_calibrator, save_reward_model
from auq.models.config import (
    BAYESIAN_METHODS,
    HEAD_CLASS,
    MEMBER_METHODS,
    UQ_METHODS,
    RewardModelConfig,
    build_layers,
)
from auq.models.finetune import finetune_pairs
from auq.models.inputs import (
    check_loading_options,
    check_placement,
    check_texts,
    dtype_name,
    numeric_column,
    relabel,
    torch_dtype,
    warn_truncation,
)
from auq.scoring.engine import ScoringOptions, ScoringStats
from auq.scoring.prefix import prompt_groups
from auq.types import PreferencePrediction, RewardPrediction
from auq.utils.console import show_progress

if TYPE_CHECKING:
    from auq.calibration import BaseCalibrator

__all__ = ["UQ_METHODS", "RewardModel", "RewardModelConfig"]

DEFAULT_COUNT = 8  # K members / T passes unless given


class RewardModel(nn.Module):
    """A reward model that reports how sure it is.

    Build it with :meth:`from_backbone` or :meth:`from_pretrained`.

    Attributes
    ----------
    backbone : Backbone
    head : PreferenceHead
    config : RewardModelConfig
    history_ : FitHistory or None
        Per-epoch training/held-out loss and accuracy of the last ``fit``.
    calibrator_ : BaseCalibrator or None
        Attached by :meth:`calibrate`; applied by :meth:`predict` and :meth:`predict_proba`.
    """

    def __init__(self, backbone: Backbone, head: PreferenceHead, config: RewardModelConfig):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.history_: FitHistory | None = None
        self.calibrator_: BaseCalibrator | None = None
        #: whether the backbone's weights have trained (then fit cannot restart in place)
        self.backbone_trained = False
        if isinstance(backbone, MemberBackbone):
            backbone.set_trainable()  # exactly the member weights train
        elif config.finetune == "frozen":
            backbone.requires_grad_(False)
        self.eval()

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | Path,
        *,
        uq: str = "heads",
        n_members: int | None = None,
        n_passes: int | None = None,
        pooling: str = "auto",
        max_length: int = 256,
        finetune: str = "frozen",
        hidden_size: int | None = None,
        bootstrap: bool | None = None,
        anchor: float | None = None,
        head_options: dict[str, Any] | None = None,
        member_options: dict[str, Any] | None = None,
        lora_options: dict[str, Any] | None = None,
        init_from_checkpoint: bool = True,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        scoring: ScoringOptions | dict[str, Any] | None = None,
        seed: int = 0,
        **loading: Any,
    ) -> RewardModel:
        """A fresh reward model on any Hugging Face backbone (name or local path).

        Parameters
        ----------
        name_or_path : str or Path
            An ``AutoModel`` checkpoint (encoder or decoder), or a TRL reward
            checkpoint (``AutoModelForSequenceClassification``, ``num_labels=1``).
        uq : {"heads", "lora", "partial", "deep", "mc_dropout", "laplace", "pyro"}
            Uncertainty method (see the README's method table).
        n_members : int, optional
            Ensemble size K (default 8) of ``"heads"``, ``"lora"``, ``"partial"``,
            ``"deep"``. Refused for ``"laplace"`` / ``"pyro"`` (they draw
            ``head_options={"n_samples": S}`` posterior samples) and ``"mc_dropout"``.
        n_passes : int, optional
            T stochastic passes of ``"mc_dropout"`` (default 8); refused otherwise.
        pooling : {"auto", "last", "mean", "cls"}
        max_length : int
            Longest tokenised (prompt, response), checked against the backbone's
            position limit; see :mod:`auq.scoring`.
        finetune : {"frozen", "full", "lora"}
            For ``uq="heads"`` and ``"mc_dropout"``: keep the backbone frozen
            (features cached), train it fully, or train PEFT LoRA adapters on it.
        hidden_size, bootstrap, anchor
            Shortcuts for the ensemble heads' options (:class:`auq.heads.EnsembleHead`).
        head_options : dict, optional
            Further head options, e.g. ``{"prior_precision": "marglik"}`` for
            ``"laplace"`` or ``{"inference": "nuts"}`` for ``"pyro"``.
        member_options : dict, optional
            Options of a backbone-level ensemble, e.g. ``{"r": 8}`` for ``"lora"``,
            ``{"n_top_layers": 2}`` for ``"partial"``, ``{"rate": 0.1}`` for ``"mc_dropout"``.
        lora_options : dict, optional
            PEFT ``LoraConfig`` options for ``finetune="lora"`` (default r=8, alpha=16).
        init_from_checkpoint : bool
            For a reward checkpoint: start the head from its score layer (members as
            copies, scored exactly like the checkpoint until fitted; Bayesian heads
            with their prior centred on it).
        dtype : torch.dtype or str, optional
            Backbone weight dtype (float32 by default); heads compute in float32.
            Saved with the model and restored by :meth:`from_pretrained`.
        device : str or torch.device, optional
            Where the model lives (``"cuda"``, ``"cuda:1"``, ...). For a model larger
            than one GPU pass ``device_map="auto"`` instead (not both).
        scoring : ScoringOptions or dict, optional
            How the scoring engine runs: micro-batch budget, autocast precision on GPU
            (bf16 by default there), prefix sharing, out-of-memory back-off,
            ``torch.compile``, the feature cache (:class:`~auq.scoring.ScoringOptions`).
            Kept as :attr:`scoring`, changeable at any time.
        seed : int
        **loading
            Hugging Face loading options passed through: ``revision``,
            ``trust_remote_code``, ``attn_implementation``, ``device_map``.
        """
        check_loading_options(loading)
        check_placement(device, loading)
        shortcuts = {"hidden_size": hidden_size, "bootstrap": bootstrap, "anchor": anchor}
        given = {k: v for k, v in shortcuts.items() if v is not None}
        if given and HEAD_CLASS.get(uq) != "EnsembleHead" and uq in UQ_METHODS:
            raise ValueError(
                f"{', '.join(given)} apply to ensemble heads, not uq={uq!r}; "
                "pass that head's options as head_options={...}"
            )
        if n_members is None and uq not in (*BAYESIAN_METHODS, "mc_dropout"):
            n_members = DEFAULT_COUNT
        if n_passes is None and uq == "mc_dropout":
            n_passes = DEFAULT_COUNT
        lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
        config = RewardModelConfig(  # validates every option before anything is loaded
            backbone=str(name_or_path),
            uq=uq,
            n_members=n_members,
            n_passes=n_passes,
            pooling=pooling,
            max_length=max_length,
            finetune=finetune,
            head={**(head_options or {}), **given},
            members=dict(member_options or {}),
            lora={**lora, **(lora_options or {})}
            if finetune == "lora"
            else dict(lora_options or {}),
            seed=seed,
            dtype=dtype_name(dtype),
            init_from_checkpoint=bool(init_from_checkpoint),
        )
        backbone = Backbone.from_pretrained(
            name_or_path,
            pooling=pooling,
            max_length=max_length,
            dtype=torch_dtype(config.dtype),
            scoring=scoring,
            **loading,
        )
        config.dtype = dtype_name(next(backbone.model.parameters()).dtype)
        backbone, head = build_layers(config, backbone)
        if backbone.is_reward_checkpoint and config.init_from_checkpoint:
            layer = backbone.score_layer
            bias = None if layer.bias is None else layer.bias.detach().float()
            try:
                head.init_from_linear(layer.weight.detach().float(), bias)
            except ValueError as err:
                raise ValueError(
                    f"{err}; or pass init_from_checkpoint=False to train the head afresh on "
                    "the checkpoint's features"
                ) from None
        model = cls(backbone, head, config)
        return model.to(device) if device is not None else model

    # -- inputs ---------------------------------------------------------------------
    def _tokenize(self, prompts: Sequence, responses: Sequence):
        tokens = self.backbone.tokenize(list(prompts), list(responses))
        warn_truncation(tokens.stats, self.config.max_length)
        return tokens

    def _pair_tokens(self, dataset: PreferenceDataset):
        n = len(dataset)
        tokens = self._tokenize(
            list(dataset.prompts) * 2, list(dataset.chosen) + list(dataset.rejected)
        )
        return tokens, n

    def _encode(
        self, prompts: list, responses: list, progress: bool | None, description: str, **budget
    ):
        """Tokens and features (N, d) or (S, N, d) of N rows through the scoring engine."""
        tokens = self._tokenize(prompts, responses)
        phi = self.backbone.encode(
            tokens,
            groups=prompt_groups(prompts),  # a prompt shared by several rows runs once
            **budget,
            progress=show_progress(progress),
            description=description,
        )
        # with device_map the backbone's last layer may sit on another device than the head
        head_device = next(iter(self.head.state_dict().values())).device
        return tokens, phi.to(head_device)

    def _pair_features(self, dataset: PreferenceDataset, progress, **budget):
        n = len(dataset)
        tokens, phi = self._encode(
            list(dataset.prompts) * 2,
            list(dataset.chosen) + list(dataset.rejected),
            progress,
            "pairs",
            **budget,
        )
        return tokens, phi[..., :n, :], phi[..., n:, :]

    def features(
        self,
        dataset: Any,
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        progress: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Features of the chosen and rejected responses, each (B, d) — (K, B, d) for members.

        Parameters
        ----------
        dataset : PreferenceDataset, datasets.Dataset, pandas.DataFrame or list of rows
        batch_size, max_tokens : int, optional
            Micro-batch limits for this call (default :attr:`scoring`'s).
        progress : bool or None
        """
        dataset = as_preference_dataset(dataset)
        _, phi_c, phi_r = self._pair_features(
            dataset, progress, batch_size=batch_size, max_tokens=max_tokens
        )
        return phi_c, phi_r

    # -- the scoring engine ------------------------------------------------------------
    @property
    def scoring(self) -> ScoringOptions:
        """How the scoring engine runs (:class:`~auq.scoring.ScoringOptions`); assignable."""
        return self.backbone.scoring

    @scoring.setter
    def scoring(self, value: ScoringOptions | dict[str, Any]) -> None:
        self.backbone.scoring = ScoringOptions.coerce(value)

    @property
    def last_scoring_stats(self) -> ScoringStats | None:
        """What the last scoring call did: micro-batches, tokens, cache hits, shared prefixes."""
        return self.backbone.last_scoring_stats

    # -- training -------------------------------------------------------------------
    @property
    def trains_backbone(self) -> bool:
        """Whether ``fit`` runs the backbone in every step (members or fine-tuning)."""
        return self.config.uq in MEMBER_METHODS or self.config.finetune != "frozen"

    def fit(
        self,
        train_dataset: Any,
        eval_dataset: Any = None,
        *,
        warm_start: bool = False,
        progress: bool | None = None,
        **options: Any,
    ) -> RewardModel:
        """Train the uncertainty layer (and the backbone unless frozen) on preference pairs.

        Parameters
        ----------
        train_dataset : PreferenceDataset, datasets.Dataset, pandas.DataFrame or list of rows
            B pairs in TRL's columns; ``margin`` and ``weight`` columns are used when present.
        eval_dataset : same types, optional
            Held-out pairs for per-epoch loss/accuracy and early stopping.
        warm_start : bool
            scikit-learn's semantics: False (default) starts from scratch — a fresh
            head (or the checkpoint's score layer); True continues from the current
            fit. A model whose backbone has trained cannot start from scratch in
            place (its pretrained weights are gone): a second ``fit`` then needs
            ``warm_start=True``, or a new model from :meth:`from_backbone`.
        progress : bool or None
            Progress bars; None shows them only on a terminal or in a notebook.
        **options
            Training options (:class:`~auq.heads.fitting.FitConfig` fields:
            ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``center_coef``,
            ``patience``, ``seed``, ``max_grad_norm``; ``head_lr`` when the backbone
            trains). An option the method cannot use is refused with a message
            (the Laplace and Pyro heads take none: their inference has its own options).

        Returns
        -------
        self
        """
        train = as_preference_dataset(train_dataset, name="train_dataset")
        evaluation = (
            None
            if eval_dataset is None
            else as_preference_dataset(eval_dataset, name="eval_dataset")
        )
        margin, weight = numeric_column(train.margin), numeric_column(train.weight)
        if self.trains_backbone:
            self.history_ = self._finetune(
                train, evaluation, margin, weight, warm_start, progress, options
            )
            return self
        self.head.check_fit_options(options)  # before any feature is computed
        phi_c, phi_r = self.features(train, progress=progress)
        eval_pairs = None if evaluation is None else self.features(evaluation, progress=progress)
        self.head.fit(
            phi_c,
            phi_r,
            margin=margin,
            weight=weight,
            eval_pairs=eval_pairs,
            warm_start=warm_start,
            progress=progress,
            **options,
        )
        self.history_ = self.head.history_
        return self

    def _finetune(self, train, evaluation, margin, weight, warm_start, progress, options):
        """Train backbone and heads end to end on tokenised pairs."""
        if self.backbone_trained and not warm_start:
            raise RuntimeError(
                "this reward model's backbone has already trained, so fit cannot start from "
                "scratch in place; pass warm_start=True to continue training, or build a new "
                "model with RewardModel.from_backbone(...)"
            )
        full = self.config.uq == "deep" or self.config.finetune == "full"
        defaults = FitConfig(epochs=3, batch_size=16, lr=2e-5 if full else 1e-4, head_lr=1e-3)
        config = defaults.replace(**options, progress=progress)
        if not warm_start:
            self.head.reset_parameters()
        tokens, n = self._pair_tokens(train)
        history = finetune_pairs(
            self,
            tokens,
            n,
            eval_pairs=None if evaluation is None else self._pair_tokens(evaluation),
            margin=margin,
            weight=weight,
            config=config,
        )
        self.backbone_trained = True
        self.head.history_ = history
        return history

    # -- inference --------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        dataset: Any,
        *,
        calibrated: bool | None = None,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        distributed: bool = False,
        progress: bool | None = None,
    ) -> PreferencePrediction:
        """Preference predictions for every pair of ``dataset``.

        Parameters
        ----------
        dataset : PreferenceDataset, datasets.Dataset, pandas.DataFrame or list of rows
        calibrated : bool or None
            Apply the attached calibrator (:meth:`calibrate`) to ``logit``/``prob``:
            None (default) when one is attached, True requires one, False never.
            ``pred.calibrator`` names the calibrator that was applied (None: the
            model's own predictive).
        batch_size : int, optional
            Texts per micro-batch at most (default ``scoring.batch_size``).
        max_tokens : int, optional
            Padded tokens per micro-batch, every row a method runs counted (default
            ``scoring.max_tokens``).
        distributed : bool
            In processes started by ``torchrun`` / ``accelerate launch``: each rank
            passes the same inputs, scores its slice, and gets the whole result.
        progress : bool or None
            Progress bar; None shows it only on a terminal or in a notebook.

        Returns
        -------
        PreferencePrediction
            ``margin_samples`` (S, B) with S = K members / T passes / posterior draws;
            chosen/rejected rewards; ``truncation`` counts.
        """
        dataset = as_preference_dataset(dataset)
        tokens, phi_c, phi_r = self._pair_features(
            dataset,
            progress,
            batch_size=batch_size,
            max_tokens=max_tokens,
            distributed=distributed,
        )
        pred = self.head.predict_pairs(phi_c, phi_r).cpu()
        pred = dataclasses.replace(
            pred,
            method=self.config.uq,
            chosen=relabel(pred.chosen, self.config.uq),
            rejected=relabel(pred.rejected, self.config.uq),
            truncation=tokens.stats,
        )
        return self._apply_calibrator(pred, calibrated)

    def _apply_calibrator(self, pred: PreferencePrediction, calibrated: bool | None):
        if calibrated is True and self.calibrator_ is None:
            raise ValueError(
                "calibrated=True needs a calibrator: call rm.calibrate(held_out_pairs) first"
            )
        if self.calibrator_ is None or calibrated is False:
            return pred
        return self.calibrator_.calibrate(pred)

    @torch.no_grad()
    def score(
        self,
        prompts: str | Sequence,
        responses: str | Sequence,
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        distributed: bool = False,
        progress: bool | None = None,
    ) -> RewardPrediction:
        """Rewards with uncertainty for N (prompt, response) pairs.

        Rows that share a prompt (best-of-n) run it once on a causal decoder
        (``scoring.prefix_sharing``); the result equals scoring each row alone.

        Parameters
        ----------
        prompts : str or sequence of N prompts
            A single prompt (a str, or one message list) is broadcast to every response.
        responses : str or sequence of N responses
            Plain strings, or message lists for conversational models.
        batch_size : int, optional
            Texts per micro-batch at most (default ``scoring.batch_size``).
        max_tokens : int, optional
            Padded tokens per micro-batch, every row a method runs counted (default
            ``scoring.max_tokens``).
        distributed : bool
            In processes started by ``torchrun`` / ``accelerate launch``: each rank
            passes the same inputs, scores its slice, and gets the whole result.
        progress : bool or None
            Progress bar; None shows it only on a terminal or in a notebook.

        Returns
        -------
        RewardPrediction
            ``samples`` (S, N), ``mean`` (N,), ``var`` (N,); ``truncation`` counts.
        """
        prompts, responses = check_texts(prompts, responses)
        tokens, phi = self._encode(
            prompts,
            responses,
            progress,
            "scoring",
            batch_size=batch_size,
            max_tokens=max_tokens,
            distributed=distributed,
        )
        pred = self.head.predict(phi).cpu()
        return dataclasses.replace(pred, method=self.config.uq, truncation=tokens.stats)

    # -- calibration --------------------------------------------------------------------
    def calibrate(
        self,
        dataset: Any,
        *,
        method: str = "temperature",
        progress: bool | None = None,
        **options: Any,
    ) -> BaseCalibrator:
        """Fit a calibrator of the preference probability on held-out pairs and attach it.

        Parameters
        ----------
        dataset : PreferenceDataset, datasets.Dataset, pandas.DataFrame or list of rows
            Held-out pairs (not the training pairs); labels are "chosen wins" and
            the calibrators symmetrise them internally.
        method : {"temperature", "platt", "isotonic", "beta"}
        progress : bool or None
            Progress bar while the pairs are scored; None shows it only on a terminal
            or in a notebook.
        **options
            Keyword options of the calibrator.

        Returns
        -------
        BaseCalibrator
            Also stored as ``calibrator_``, applied by :meth:`predict` and
            :meth:`predict_proba`, and saved by :meth:`save_pretrained`.
        """
        from auq.calibration import make_calibrator

        calibrator = make_calibrator(method, **options)
        calibrator.fit(self.predict(dataset, calibrated=False, progress=progress))
        self.calibrator_ = calibrator
        return calibrator

    def predict_proba(self, dataset: Any) -> np.ndarray:
        """P(chosen ≻ rejected) per pair, calibrated when a calibrator is attached, shape (B,)."""
        return self.predict(dataset).prob.numpy()

    # -- checkpoints ------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, *, save_backbone: bool = True) -> None:
        """Write ``auq_config.json``, the head (safetensors + JSON) and the backbone.

        Parameters
        ----------
        save_directory : str or Path
        save_backbone : bool
            Store the backbone weights and tokenizer (safetensors) in
            ``backbone/``; False stores only its name or path (untrained backbones only).
            Backbone-level ensembles also write their members to ``members/``.
        """
        save_reward_model(self, save_directory, save_backbone=save_backbone)

    def save_calibrator(self, directory: str | Path) -> None:
        """Write the attached calibrator as ``calibrator.json`` into a model directory."""
        save_calibrator(self, directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        scoring: ScoringOptions | dict[str, Any] | None = None,
        **loading: Any,
    ) -> RewardModel:
        """Load a model written by :meth:`save_pretrained` (safetensors and JSON only).

        Parameters
        ----------
        directory : str or Path
        device : str or torch.device, optional
        dtype : torch.dtype or str, optional
            Backbone weight dtype; default: the dtype the model was saved in.
        scoring : ScoringOptions or dict, optional
            Scoring-engine options (see :meth:`from_backbone`).
        **loading
            Hugging Face loading options (``trust_remote_code``, ``attn_implementation``,
            ``device_map``, ``revision``).

        Raises
        ------
        FileNotFoundError
            When ``directory`` holds no ``auq_config.json``.
        CheckpointError
            Naming the file, for a malformed or incomplete config, damaged weights,
            or weights that do not match the config.
        """
        check_placement(device, loading)
        model = load_reward_model(cls, directory, dtype=dtype, loading=loading)
        if scoring is not None:
            model.scoring = scoring
        return model.to(device) if device is not None else model

    # -- display ---------------------------------------------------------------------
    def __repr__(self) -> str:
        c = self.config
        count = (
            f"n_passes={c.n_passes}"
            if c.uq == "mc_dropout"
            else f"n_members={c.n_members}"
            if c.n_members is not None
            else f"n_samples={self.head.n_samples}"
        )
        calibrator = None if self.calibrator_ is None else type(self.calibrator_).__name__
        return (
            f"RewardModel(backbone={c.backbone!r}, uq={c.uq!r}, {count}, "
            f"features={self.backbone.hidden_size}, finetune={c.finetune!r}, "
            f"fitted={self.head.is_fitted}, calibrator={calibrator})"
        )
