"""K LoRA adapters on one frozen base model, scored in one forward over K·B rows.

The batch is repeated K times (member-major: rows ``k·B … k·B+B−1`` belong to
member k) and every target linear layer adds its members' low-rank updates with
two batched matmuls::

    x (K·B, L, in) ─view─▶ (K, B·L, in)
    Δ = bmm(bmm(dropout(x), Aᵀ), Bᵀ) · α/r      A (K, r, in), B (K, out, r)
    y = base(x) + Δ.view(K·B, L, out)

Why not PEFT's mixed-adapter batches (``model(..., adapter_names=[...])``)? In
peft 0.21 they raise in training mode ("Cannot pass `adapter_names` when the
model is in training mode"), and each LoRA layer loops over the adapters in
Python. The updates here are added by forward hooks that exist only during
:meth:`LoraMembers._member_hidden`, so the members train jointly with dropout
on, the HF model keeps its plain structure (``model.save_pretrained`` writes
the untouched base), and the checkpoints are PEFT's own format: one adapter
directory per member that ``PeftModel.from_pretrained(base, dir / "member_k")``
loads.

PEFT initialises B = 0, which makes every member start equal to the base model
and to each other; here A is drawn as in PEFT (seeded, different per member)
and B ~ N(0, init_scale²), so the members differ from the start.

Cost: the forward over K·B rows (K forwards' FLOPs) plus, per target layer,
the two thin matmuls of rank r. The second adds into the base layer's output
**in place** (``baddbmm_``): an out-of-place ``baddbmm`` first copied the whole
(K·B, L, out) output, which showed up as the largest ``aten::copy_`` of the
profile. Measured on MiniLM (128 built-in texts, max_length 128, K = 4, r = 4,
CPU time, one thread, minimum of 7 interleaved runs), against the bare forward
over K·B rows: micro-batches of 16 items 1.128× → 1.075×, single items
1.097× → 1.062×. The rest is the rank-r matmuls, memory-bound on a CPU. (Merging
each member's update into its weights, ``bmm`` with W + B_k A_k α/r, measured
no faster on a CPU and would hold K merged weight copies per layer for the
backward pass.)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auq.backbone import Backbone
from auq.members.base import MemberBackbone, check_n_members, register_members
from auq.scoring.prefix import PrefixBatch, cache_argument, output_cache, select_cache_rows
from auq.utils.io import CheckpointError, load_safetensors
from auq.utils.validation import check_choice, check_positive_int

__all__ = ["LoraMembers", "update_gram", "update_similarity"]

#: module names left out of ``target_modules="all-linear"``: output layers and the
#: BERT-style pooler, whose output is not part of the features
EXCLUDED_FROM_ALL_LINEAR = ("lm_head", "score", "classifier", "pooler")
INIT_CHOICES = (True, "gaussian")
_CONFIG_NAME = "lora_members.json"


def _check_number(name: str, value: object, *, above: float | None = None) -> float:
    """A real number ≥ 0 (or > ``above``), else ``ValueError`` naming the option."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= above if above is not None else value < 0):
        bound = f"> {above:g}" if above is not None else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear

    return (nn.Linear, Conv1D)


def _dims(layer: nn.Module) -> tuple[int, int]:
    """(in, out) features of an ``nn.Linear`` or a transformers ``Conv1D``."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.weight.shape[0], layer.weight.shape[1]


def resolve_target_modules(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """Names of the linear layers that get adapters, with PEFT's matching rules.

    ``"all-linear"``: every ``nn.Linear``/``Conv1D`` except those in
    :data:`EXCLUDED_FROM_ALL_LINEAR`; another string: a regular expression
    that must match the whole name; a list: names equal to an entry or ending
    in ``"." + entry``.
    """
    linear = [n for n, m in model.named_modules() if isinstance(m, _linear_types())]
    if target_modules == "all-linear":
        names = [n for n in linear if not set(n.split(".")) & set(EXCLUDED_FROM_ALL_LINEAR)]
    elif isinstance(target_modules, str):
        names = [n for n in linear if re.fullmatch(target_modules, n)]
    else:
        keys = list(target_modules)
        names = [n for n in linear if any(n == t or n.endswith("." + t) for t in keys)]
    if not names:
        sample = ", ".join(linear[:8]) + (", ..." if len(linear) > 8 else "")
        raise ValueError(
            f"target_modules={target_modules!r} matches no nn.Linear/Conv1D layer of "
            f"{type(model).__name__}; give 'all-linear', a regex or a list of names such as: "
            f"{sample}"
        )
    return names


def _checkpointing(model: nn.Module) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
    if flag is None:
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


class _StackedLora(nn.Module):
    """The K members' LoRA matrices of one linear layer: A (K, r, in), B (K, out, r)."""

    def __init__(
        self,
        k: int,
        r: int,
        fan_in: int,
        fan_out: int,
        *,
        init_lora_weights: bool | str,
        init_scale: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        a = torch.empty(k, r, fan_in)
        if init_lora_weights == "gaussian":
            a.normal_(0.0, 1.0 / r, generator=generator)
        else:  # PEFT's default: kaiming_uniform_(a=√5) = U(±1/√in)
            bound = 1.0 / math.sqrt(fan_in)
            a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.randn(k, fan_out, r, generator=generator) * init_scale)

    def add_to(self, out: Tensor, x: Tensor, *, scaling: float, p: float, training: bool) -> Tensor:
        """``out += scaling · B_k A_k dropout(x_k)``: (K, n, out), (K, n, in) → (K, n, out).

        ``out`` (the base layer's output, fresh from its forward) is updated **in
        place** with one ``baddbmm_`` when the dtypes agree: no copy of the
        layer output. Autograd allows it in training too — a linear layer's
        backward needs its input and weight, never its output — and its version
        counter would refuse (not silently mis-differentiate) a layer that saved
        its output. Under autocast (``out`` bf16/fp16, adapters float32) the
        update is added out of place.
        """
        x = F.dropout(x.to(self.lora_A.dtype), p=p, training=training)
        h = torch.bmm(x, self.lora_A.transpose(1, 2))  # (K, n, r)
        b_t = self.lora_B.transpose(1, 2)  # (K, r, out)
        if out.dtype == h.dtype:  # one fused in-place op for the update, its scale and the sum
            return out.baddbmm_(h, b_t, alpha=scaling)
        return out + (scaling * torch.bmm(h, b_t)).to(out.dtype)


def update_gram(lora_a: Tensor, lora_b: Tensor) -> Tensor:
    """Gram matrix of the members' updates, G_ij = ⟨B_i A_i, B_j A_j⟩_F, shape (K, K).

    Computed from r×r blocks without forming any update:
    G_ij = Σ_ab (B_iᵀ B_j)_ab (A_i A_jᵀ)_ab.

    Parameters
    ----------
    lora_a : Tensor, shape (K, r, in)
    lora_b : Tensor, shape (K, out, r)

    Returns
    -------
    Tensor, shape (K, K), float64.
    """
    k, r, _ = lora_a.shape
    # float64: the r×r block products cancel when a reparametrisation mixes A's rows,
    # and float32 would leave ~1e-5 of the exact invariance; the cost is (K·r)²(in + out)
    a = lora_a.double().reshape(k * r, -1)  # rows (i, a)
    b = lora_b.double().permute(1, 0, 2).reshape(lora_b.shape[1], k * r)  # columns (i, a)
    blocks = (b.T @ b) * (a @ a.T)  # (K·r, K·r): (B_iᵀB_j)_ab · (A_iA_jᵀ)_ab
    return blocks.view(k, r, k, r).sum(dim=(1, 3))


def update_similarity(lora_a: Tensor, lora_b: Tensor) -> Tensor:
    """Mean over member pairs i < j of cos²(B_i A_i, B_j A_j), shape () — in [0, 1].

    A member whose update is 0 has cosine 0 with every other one.

    Parameters
    ----------
    lora_a : Tensor, shape (K, r, in)
    lora_b : Tensor, shape (K, out, r)
    """
    gram = update_gram(lora_a, lora_b)
    norms = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    i, j = torch.triu_indices(*gram.shape, offset=1, device=gram.device)
    return cos[i, j].square().mean()


@register_members
class LoraMembers(MemberBackbone):
    """K LoRA adapters on one frozen base model, scored in one batched forward.

    Build with :meth:`build`. Only the adapters train (``adapters.*``; the base
    model's parameters have ``requires_grad=False``); with ``lora_dropout > 0``
    the dropout acts in training mode only.

    Attributes
    ----------
    target_names : list of str
        Qualified names of the adapted linear layers.
    adapters : nn.ModuleList of _StackedLora
        One entry per target layer: ``lora_A`` (K, r, in), ``lora_B`` (K, out, r).
    """

    method = "lora"

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        *,
        n_members: int,
        r: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        target_modules: str | list[str] = "all-linear",
        init_lora_weights: bool | str = True,
        init_scale: float = 0.01,
        diversity: float = 0.0,
        seed: int = 0,
    ) -> LoraMembers:
        """K adapters on ``backbone``'s model (which stays shared and frozen).

        Parameters
        ----------
        backbone : Backbone
            A plain ``AutoModel`` backbone.
        n_members : int
            K ≥ 2.
        r, lora_alpha, lora_dropout : see ``peft.LoraConfig``
            Rank, scale (updates are multiplied by ``lora_alpha / r``), dropout on
            the adapters' input.
        target_modules : "all-linear", a regex, or a list of names
            See :func:`resolve_target_modules`.
        init_lora_weights : {True, "gaussian"}
            Initialisation of A as in PEFT: U(±1/√in), or N(0, 1/r²).
        init_scale : float
            Standard deviation of the initial B entries (PEFT: 0, which makes
            all members identical at the start).
        diversity : float
            Weight of the scale-invariant diversity penalty :meth:`regularizer`
            (0 = off).
        seed : int
            Seed of the initialisation.
        """
        check_n_members(n_members)
        check_positive_int("r", r)
        _check_number("lora_alpha", lora_alpha, above=0.0)
        if not 0 <= lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
        check_choice("init_lora_weights", init_lora_weights, INIT_CHOICES)
        _check_number("init_scale", init_scale)
        _check_number("diversity", diversity)
        if not isinstance(target_modules, str):
            target_modules = list(target_modules)
        member = cls._adopt(backbone)
        member.n_members = n_members
        member.r, member.lora_alpha, member.lora_dropout = r, float(lora_alpha), float(lora_dropout)
        member.target_modules = target_modules
        member.init_lora_weights, member.init_scale = init_lora_weights, float(init_scale)
        member.diversity, member.seed = float(diversity), seed
        member.scaling = member.lora_alpha / r
        member.target_names = resolve_target_modules(member.model, target_modules)
        gen = torch.Generator().manual_seed(seed)
        init = {"init_lora_weights": init_lora_weights, "init_scale": init_scale, "generator": gen}
        adapters = [
            _StackedLora(n_members, r, *_dims(member.model.get_submodule(name)), **init)
            for name in member.target_names
        ]
        member.adapters = nn.ModuleList(adapters).to(member.device)
        member._rows = 0
        member.set_trainable()
        return member.eval()

    def set_trainable(self) -> None:
        """Freeze the base model; train every adapter (all K members)."""
        self.model.requires_grad_(False)
        self.adapters.requires_grad_(True)

    def get_config(self) -> dict[str, Any]:
        return {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "init_lora_weights": self.init_lora_weights,
            "init_scale": self.init_scale,
            "diversity": self.diversity,
            "seed": self.seed,
        }

    # -- forward ------------------------------------------------------------------
    def _hook(self, lora: _StackedLora):
        def add_members(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x = args[0]
            if x.shape[0] != self._rows:
                raise RuntimeError(
                    f"LoRA members need the batch on axis 0 of every target layer's input; "
                    f"{type(module).__name__} got shape {tuple(x.shape)} for {self._rows} rows"
                )
            k = self.n_members
            summed = lora.add_to(
                output.reshape(k, -1, output.shape[-1]),  # (K, B·L, out)
                x.reshape(k, -1, x.shape[-1]),  # (K, B·L, in)
                scaling=self.scaling,
                p=self.lora_dropout,
                training=self.training,
            )
            return summed.reshape(output.shape)

        return add_members

    def _run_model(self, kwargs: dict[str, Any], **extra: Any) -> Any:
        """The base model over K·B rows (``kwargs`` repeated K times) with the members' updates.

        ``extra`` goes to the model unrepeated (``use_cache``, a cache of K·B rows).
        """
        if self.training and _checkpointing(self.model):
            raise RuntimeError(
                "uq='lora' does not support gradient checkpointing: the recomputation in "
                "backward would run without the members' updates; disable it with "
                "model.gradient_checkpointing_disable()"
            )
        k = self.n_members
        b = kwargs["input_ids"].shape[0]
        repeated = {name: t.repeat(k, *([1] * (t.ndim - 1))) for name, t in kwargs.items()}
        self._rows = k * b
        handles = [
            self.model.get_submodule(name).register_forward_hook(self._hook(lora))
            for name, lora in zip(self.target_names, self.adapters, strict=True)
        ]
        try:
            return self.model(**repeated, **extra)
        finally:
            for handle in handles:
                handle.remove()

    def _member_hidden(self, kwargs: dict[str, Tensor]) -> Tensor:
        """Last hidden states of every member, (K, B, L, d), from one forward over K·B rows."""
        hidden = self._run_model(kwargs).last_hidden_state  # (K·B, L, d)
        return hidden.reshape(self.n_members, -1, *hidden.shape[1:])

    # -- prefix sharing -------------------------------------------------------------
    def prefix_sharing_unsupported(self) -> str | None:
        return Backbone.prefix_sharing_unsupported(self)

    def forward_shared_prefix(self, batch: PrefixBatch) -> Tensor:
        """Features (K, n, d) of continuations: each member's prefix cache, K·G rows, reused."""
        k, g = self.n_members, batch.prefix["input_ids"].shape[0]
        cache = output_cache(self._run_model(batch.prefix, use_cache=True))  # K·G rows
        member = torch.arange(k, device=batch.prefix_rows.device)[:, None]
        rows = (member * g + batch.prefix_rows[None, :]).reshape(-1)  # member-major, K·n
        suffix = {
            "input_ids": batch.suffix["input_ids"],
            "attention_mask": batch.model_mask,
            "position_ids": batch.suffix["position_ids"],
        }
        cache = select_cache_rows(cache, rows)
        out = self._run_model(suffix, **{cache_argument(self.model): cache})
        hidden = out.last_hidden_state.reshape(k, -1, *out.last_hidden_state.shape[1:])
        return self._pool_members(hidden, batch.suffix["attention_mask"])

    # -- training -----------------------------------------------------------------
    def regularizer(self) -> Tensor:
        """Diversity penalty to add to the training loss (0 when ``diversity == 0``).

        ``diversity · mean over target layers of mean over member pairs i < j of
        cos²(ΔW_i, ΔW_j)``, where ΔW_k = B_k A_k is member k's weight update and
        cos the cosine similarity of the flattened updates:
        ⟨ΔW_i, ΔW_j⟩_F / (‖ΔW_i‖_F ‖ΔW_j‖_F). It lies in [0, diversity]: 0 when
        every pair of updates is orthogonal, ``diversity`` when all are
        collinear; minimising it spreads the members over different update
        directions, the aim of Zhai et al. (2023, "Uncertainty-penalized RLHF
        with diverse reward LoRA ensembles"), who maximise the nuclear norm of
        the stacked A matrices instead.

        It depends on the updates ΔW_k only, so it is **scale-invariant**: any
        reparametrisation that keeps the members' functions (A_k → G A_k,
        B_k → B_k G⁻¹ for an invertible r×r G, e.g. A ×c and B ×1/c) leaves it
        unchanged, and so does scaling a member's update by any c ≠ 0 — it
        cannot be lowered by inflating the adapters. (Being scale-invariant, its
        gradient grows like 1/‖ΔW‖ for tiny updates; it is exactly 0, with a zero
        gradient, for members whose B is 0.)

        Cost per target layer: the K×K Gram matrix of the updates from r×r
        blocks, ⟨B_i A_i, B_j A_j⟩_F = Σ (B_iᵀ B_j) ⊙ (A_i A_jᵀ), i.e. two
        (K·r)×(K·r) products in float64, O((K·r)² (in + out)), never a full
        out×in update.

        Returns
        -------
        Tensor, shape (), on the adapters' device; differentiable in every
        member's A and B.
        """
        if self.diversity == 0:
            return self.adapters[0].lora_A.new_zeros(())
        sims = [update_similarity(a.lora_A, a.lora_B) for a in self.adapters]
        return (self.diversity * torch.stack(sims).mean()).to(self.adapters[0].lora_A.dtype)

    # -- checkpoints --------------------------------------------------------------
    def save_members(self, directory: str | Path) -> None:
        """Write ``member_k/`` PEFT adapter directories (safetensors + adapter_config.json)."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        conv1d = any(
            not isinstance(self.model.get_submodule(n), nn.Linear) for n in self.target_names
        )
        for k in range(self.n_members):
            sub = out / f"member_{k}"
            sub.mkdir(exist_ok=True)
            tensors = {}
            for name, lora in zip(self.target_names, self.adapters, strict=True):
                prefix = f"base_model.model.{name}"
                tensors[f"{prefix}.lora_A.weight"] = lora.lora_A[k].detach().cpu().contiguous()
                tensors[f"{prefix}.lora_B.weight"] = lora.lora_B[k].detach().cpu().contiguous()
            save_file(tensors, str(sub / "adapter_model.safetensors"), metadata={"format": "pt"})
            LoraConfig(
                r=self.r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                target_modules=list(self.target_names),
                fan_in_fan_out=conv1d,
                base_model_name_or_path=self.name_or_path or None,
            ).save_pretrained(str(sub))
        meta = {"method": self.method, "n_members": self.n_members, **self.get_config()}
        (out / _CONFIG_NAME).write_text(json.dumps(meta, indent=2))

    def load_members(self, directory: str | Path) -> None:
        """Read the adapters written by :meth:`save_members`.

        Raises
        ------
        CheckpointError
            Naming the file, when an adapter file is missing, damaged, lacks a target
            layer or has the wrong shape.
        """
        directory = Path(directory)
        with torch.no_grad():
            for k in range(self.n_members):
                path = directory / f"member_{k}" / "adapter_model.safetensors"
                if not path.is_file():
                    raise CheckpointError(
                        f"{path} is missing; save_members writes member_0 … "
                        f"member_{self.n_members - 1} for n_members={self.n_members}"
                    )
                tensors = load_safetensors(path)
                for name, lora in zip(self.target_names, self.adapters, strict=True):
                    prefix = f"base_model.model.{name}"
                    for part, target in (("lora_A", lora.lora_A[k]), ("lora_B", lora.lora_B[k])):
                        key = f"{prefix}.{part}.weight"
                        if key not in tensors:
                            raise CheckpointError(
                                f"{path} has no adapter for {name!r}; was it saved with the same "
                                "target_modules?"
                            )
                        if tensors[key].shape != target.shape:
                            raise CheckpointError(
                                f"{path}: {key!r} has shape {tuple(tensors[key].shape)}, "
                                f"expected {tuple(target.shape)} (r={self.r})"
                            )
                        target.copy_(tensors[key])
