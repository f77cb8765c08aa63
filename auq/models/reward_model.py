"""``RewardModel``: a Hugging Face backbone plus an uncertainty layer.

::

    rm = auq.RewardModel.from_backbone("path/or/name", uq="heads", n_members=8)
    rm.fit(train_ds, eval_dataset=val_ds)
    pp = rm.predict(test_ds)              # PreferencePrediction, margins (K, B)
    rp = rm.score(prompts, responses)     # RewardPrediction, rewards (K, N)
    rm.save_pretrained("rm"); rm = auq.RewardModel.from_pretrained("rm")

With a frozen backbone (the default) features are computed once per data set and
every epoch and every member reuses them; ``finetune="full"`` or ``"lora"``
trains the backbone together with the heads.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from auq.backbone import Backbone
from auq.data import PreferenceDataset, render_pair_texts
from auq.heads.base import PreferenceHead, load_head, save_head
from auq.heads.ensemble import EnsembleHead
from auq.heads.fitting import FitConfig, FitHistory
from auq.members.base import MemberBackbone
from auq.models.config import UQ_METHODS, RewardModelConfig, build_layers
from auq.models.finetune import finetune_pairs
from auq.types import PreferencePrediction, RewardPrediction

if TYPE_CHECKING:
    from auq.calibration import BaseCalibrator

__all__ = ["UQ_METHODS", "RewardModel", "RewardModelConfig"]

CONFIG_NAME = "auq_config.json"
CALIBRATOR_NAME = "calibrator.json"


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
    """

    def __init__(self, backbone: Backbone, head: PreferenceHead, config: RewardModelConfig):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.history_: FitHistory | None = None
        self.calibrator_: BaseCalibrator | None = None
        if isinstance(backbone, MemberBackbone) and config.uq != "mc_dropout":
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
        n_members: int = 8,
        pooling: str = "auto",
        max_length: int = 256,
        finetune: str = "frozen",
        hidden_size: int | None = None,
        bootstrap: bool | None = None,
        anchor: float | None = None,
        head_options: dict[str, Any] | None = None,
        member_options: dict[str, Any] | None = None,
        lora_options: dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> RewardModel:
        """A fresh reward model on any Hugging Face backbone (name or local path).

        Parameters
        ----------
        name_or_path : str or Path
            An ``AutoModel`` checkpoint (encoder or decoder), or a TRL reward
            checkpoint (``AutoModelForSequenceClassification``, ``num_labels=1``)
            whose score layer then initialises every head member.
        uq : {"heads", "lora", "partial", "deep", "mc_dropout", "laplace", "pyro"}
            Uncertainty method (see the README's method table).
        n_members : int
            Ensemble size K (``"mc_dropout"``: stochastic passes T; ignored by
            ``"laplace"`` / ``"pyro"``, which draw posterior samples).
        pooling : {"auto", "last", "mean", "cls"}
        max_length : int
            Longest tokenised (prompt, response); see :mod:`auq.scoring.batching`.
        finetune : {"frozen", "full", "lora"}
            For ``uq="heads"`` and ``"mc_dropout"``: keep the backbone frozen
            (features cached), train it fully, or train PEFT LoRA adapters on it.
        hidden_size, bootstrap, anchor
            Shortcuts for the ensemble heads' options (:class:`auq.heads.EnsembleHead`);
            ``bootstrap`` defaults to True for reward checkpoints (whose members
            start identical).
        head_options : dict, optional
            Further head options, e.g. ``{"prior_precision": "marglik"}`` for
            ``"laplace"`` or ``{"inference": "nuts"}`` for ``"pyro"``.
        member_options : dict, optional
            Options of a backbone-level ensemble, e.g. ``{"r": 8}`` for ``"lora"``,
            ``{"n_top_layers": 2}`` for ``"partial"``, ``{"rate": 0.1}`` for ``"mc_dropout"``.
        lora_options : dict, optional
            PEFT ``LoraConfig`` options for ``finetune="lora"`` (default r=8, alpha=16).
        dtype : torch.dtype, optional
            Backbone weight dtype (heads compute in float32).
        device : str or torch.device, optional
        seed : int
        """
        head = dict(head_options or {})
        shortcuts = {"hidden_size": hidden_size, "bootstrap": bootstrap, "anchor": anchor}
        given = {k: v for k, v in shortcuts.items() if v is not None}
        if given and uq in ("laplace", "pyro"):
            raise ValueError(
                f"{', '.join(given)} apply to ensemble heads, not uq={uq!r}; "
                "pass that head's options as head_options={...}"
            )
        head.update(given)
        if uq not in ("laplace", "pyro"):
            head.setdefault("seed", seed)
        lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
        config = RewardModelConfig(  # validates every option before anything is loaded
            backbone=str(name_or_path),
            uq=uq,
            n_members=n_members,
            pooling=pooling,
            max_length=max_length,
            finetune=finetune,
            head=head,
            members=dict(member_options or {}),
            lora={**lora, **(lora_options or {})} if finetune == "lora" else {},
            seed=seed,
        )
        backbone = Backbone.from_pretrained(
            name_or_path, pooling=pooling, max_length=max_length, dtype=dtype
        )
        if backbone.is_reward_checkpoint and uq == "heads":
            config.head.setdefault("bootstrap", True)
        backbone, head_module = build_layers(config, backbone)
        if backbone.is_reward_checkpoint and uq == "heads" and not config.head.get("hidden_size"):
            layer = backbone.score_layer
            head_module.init_from_linear(layer.weight.detach().float(), _bias(layer))
        model = cls(backbone, head_module, config)
        return model.to(device) if device is not None else model

    # -- inputs ---------------------------------------------------------------------
    def _tokenize(self, prompts: Sequence, responses: Sequence):
        """Render conversational rows with the chat template, then tokenise."""
        tok = self.backbone.tokenizer
        conversational = any(not isinstance(x, str) for x in (*prompts, *responses))
        if conversational:
            texts = [render_pair_texts(p, r, tok) for p, r in zip(prompts, responses, strict=True)]
            prompts, responses = [t[0] for t in texts], [t[1] for t in texts]
        return self.backbone.tokenize(
            list(prompts), list(responses), add_special_tokens=not conversational
        )

    def _pair_tokens(self, dataset: PreferenceDataset):
        _require_dataset(dataset)
        n = len(dataset)
        tokens = self._tokenize(
            list(dataset.prompts) * 2, list(dataset.chosen) + list(dataset.rejected)
        )
        return tokens, n

    def features(
        self, dataset: PreferenceDataset, *, progress: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Features of the chosen and rejected responses, each (B, d) — (K, B, d) for members."""
        tokens, n = self._pair_tokens(dataset)
        phi = self.backbone.encode(tokens, progress=progress)
        return phi[..., :n, :], phi[..., n:, :]

    # -- training -------------------------------------------------------------------
    def fit(
        self,
        train_dataset: PreferenceDataset,
        eval_dataset: PreferenceDataset | None = None,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        progress: bool = True,
        **options: Any,
    ) -> RewardModel:
        """Train the uncertainty layer (and the backbone unless frozen) on preference pairs.

        Parameters
        ----------
        train_dataset : PreferenceDataset
            B pairs; its ``margin`` and ``weight`` columns are used when present.
        eval_dataset : PreferenceDataset, optional
            Held-out pairs for per-epoch loss/accuracy and early stopping.
        epochs, batch_size, lr : optional
            Overrides of :class:`auq.heads.fitting.FitConfig` (defaults depend on ``finetune``).
        progress : bool
            Show progress bars.
        **options
            Other :class:`~auq.heads.fitting.FitConfig` fields (``weight_decay``,
            ``center_coef``, ``patience``, ``seed``, ``max_grad_norm``).

        Returns
        -------
        self
        """
        _require_dataset(train_dataset, "train_dataset")
        if eval_dataset is not None:
            _require_dataset(eval_dataset, "eval_dataset")
        given = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
        config = self._default_fit_config().replace(
            progress=progress, **{k: v for k, v in given.items() if v is not None}, **options
        )
        margin = _column(train_dataset.margin)
        weight = _column(train_dataset.weight)
        if self.trains_backbone:
            self.history_ = self._finetune(train_dataset, eval_dataset, margin, weight, config)
            return self
        phi_c, phi_r = self.features(train_dataset, progress=progress)
        if isinstance(self.head, EnsembleHead):
            eval_pairs = None if eval_dataset is None else self.features(eval_dataset)
            self.head.fit(
                phi_c, phi_r, margin=margin, weight=weight, eval_pairs=eval_pairs, config=config
            )
            self.history_ = self.head.history_
        else:  # closed-form / Bayesian heads have their own inference
            self.head.fit(phi_c, phi_r, margin=margin, weight=weight)
            self.history_ = None
        return self

    @property
    def trains_backbone(self) -> bool:
        """Whether ``fit`` trains backbone weights (members or fine-tuning) with the heads."""
        return isinstance(self.backbone, MemberBackbone) or self.config.finetune != "frozen"

    def _default_fit_config(self) -> FitConfig:
        if not self.trains_backbone:
            return FitConfig()
        full = self.config.uq == "deep" or self.config.finetune == "full"
        return FitConfig(epochs=3, batch_size=16, lr=2e-5 if full else 1e-4, head_lr=1e-3)

    def _finetune(self, train, evaluation, margin, weight, config: FitConfig) -> FitHistory:
        """Train backbone and heads end to end on tokenised pairs."""
        tokens, n = self._pair_tokens(train)
        return finetune_pairs(
            self,
            tokens,
            n,
            eval_pairs=None if evaluation is None else self._pair_tokens(evaluation),
            margin=margin,
            weight=weight,
            config=config,
        )

    # -- inference --------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, dataset: PreferenceDataset, *, progress: bool = False
    ) -> PreferencePrediction:
        """Preference predictions for every pair of ``dataset``.

        Returns
        -------
        PreferencePrediction
            ``margin_samples`` (S, B) with S = K members; chosen/rejected rewards.
        """
        phi_c, phi_r = self.features(dataset, progress=progress)
        return self.head.predict_pairs(phi_c, phi_r).cpu()

    @torch.no_grad()
    def score(
        self,
        prompts: str | Sequence,
        responses: str | Sequence,
        *,
        progress: bool = False,
    ) -> RewardPrediction:
        """Rewards with uncertainty for N (prompt, response) pairs.

        Parameters
        ----------
        prompts : str or sequence of N prompts
            A single prompt is broadcast to every response.
        responses : str or sequence of N responses
            Plain strings, or message lists for conversational models.

        Returns
        -------
        RewardPrediction
            ``samples`` (S, N), ``mean`` (N,), ``var`` (N,).
        """
        if isinstance(responses, str):
            responses = [responses]
        if isinstance(prompts, str):
            prompts = [prompts] * len(responses)
        if len(prompts) != len(responses):
            raise ValueError(
                f"prompts and responses must have the same length, got {len(prompts)} "
                f"and {len(responses)}"
            )
        phi = self.backbone.encode(self._tokenize(prompts, responses), progress=progress)
        return self.head.predict(phi).cpu()

    # -- calibration --------------------------------------------------------------------
    def calibrate(
        self, dataset: PreferenceDataset, *, method: str = "temperature", **options: Any
    ) -> BaseCalibrator:
        """Fit a calibrator of the preference probability on held-out pairs and attach it.

        Parameters
        ----------
        dataset : PreferenceDataset
            Held-out pairs (not the training pairs); labels are "chosen wins" and
            the calibrators symmetrise them internally.
        method : {"temperature", "platt", "isotonic", "beta"}
        **options
            Keyword options of the calibrator.

        Returns
        -------
        BaseCalibrator
            Also stored as ``calibrator_``, used by :meth:`predict_proba` and saved
            by :meth:`save_pretrained`.
        """
        from auq.calibration import make_calibrator

        calibrator = make_calibrator(method, **options).fit(self.predict(dataset))
        self.calibrator_ = calibrator
        return calibrator

    def predict_proba(self, dataset: PreferenceDataset) -> np.ndarray:
        """P(chosen ≻ rejected) per pair, calibrated when a calibrator is attached, shape (B,)."""
        pred = self.predict(dataset)
        if self.calibrator_ is None:
            return pred.prob.numpy()
        return self.calibrator_.predict_proba(pred)

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
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        model = self.backbone.model
        if not save_backbone and any(p.requires_grad for p in model.parameters()):
            raise ValueError("a trained backbone must be saved: use save_backbone=True")
        if save_backbone:
            if self.config.finetune == "lora":
                # adapters folded into a copy (same function); loading adds fresh identity
                # adapters on top, so training can go on in LoRA mode
                model = copy.deepcopy(model).merge_and_unload()
            model.save_pretrained(out / "backbone", safe_serialization=True)
            self.backbone.tokenizer.save_pretrained(out / "backbone")
            config["backbone"] = "backbone"
        config["auq_version"] = _version()
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        save_head(self.head, out / "head")
        if isinstance(self.backbone, MemberBackbone):
            self.backbone.save_members(out / "members")
        if self.calibrator_ is not None:
            self.save_calibrator(out)

    def save_calibrator(self, directory: str | Path) -> None:
        """Write the attached calibrator as ``calibrator.json`` into a model directory."""
        if self.calibrator_ is None:
            raise ValueError("no calibrator attached; call rm.calibrate(held_out_pairs) first")
        path = Path(directory) / CALIBRATOR_NAME
        path.write_text(json.dumps(self.calibrator_.get_state(), indent=2))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: torch.device | str | None = None
    ) -> RewardModel:
        """Load a model written by :meth:`save_pretrained` (no pickle anywhere)."""
        directory = Path(directory)
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} has no {CONFIG_NAME}; to start from a Hugging Face model or a "
                "TRL reward checkpoint use auq.RewardModel.from_backbone(name_or_path)"
            )
        raw = json.loads(path.read_text())
        raw.pop("auq_version", None)
        config = RewardModelConfig(**raw)
        source = config.backbone
        if not Path(source).is_absolute() and (directory / source).is_dir():
            source = str(directory / source)
        backbone = Backbone.from_pretrained(
            source, pooling=config.pooling, max_length=config.max_length
        )
        backbone, _ = build_layers(config, backbone)
        if isinstance(backbone, MemberBackbone):
            backbone.load_members(directory / "members")
        head = load_head(directory / "head")
        model = cls(backbone, head, config).eval()
        if (directory / CALIBRATOR_NAME).is_file():
            from auq.calibration import calibrator_from_state

            state = json.loads((directory / CALIBRATOR_NAME).read_text())
            model.calibrator_ = calibrator_from_state(state)
        return model.to(device) if device is not None else model

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"backbone={c.backbone!r}, uq={c.uq!r}, n_members={c.n_members}, "
            f"finetune={c.finetune!r}"
        )


def _require_dataset(value, name: str = "dataset") -> None:
    if not isinstance(value, PreferenceDataset):
        raise TypeError(
            f"{name}: expected an auq.PreferenceDataset, got {type(value).__name__}; build one "
            "with auq.PreferenceDataset.from_records(rows) (or from_jsonl / from_pandas / from_hf)"
        )


def _column(values) -> Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=torch.float32)


def _bias(layer: nn.Linear) -> Tensor | None:
    return None if layer.bias is None else layer.bias.detach().float()


def _version() -> str:
    from auq.utils.metadata import package_version

    return package_version()
