"""K independent full models: the deep-ensemble reference (expensive on purpose).

Member 0 is the loaded model itself; members 1 … K−1 are deep copies, each
perturbed with its own seeded noise so they do not start identical. They are
scored one after the other, as a user without auq would, which is what the
cheaper methods (heads, LoRA, partial) are measured against. Every member is
fully trainable.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from auq.backbone import Backbone
from auq.members.base import MemberBackbone, check_n_members, register_members, relative_noise
from auq.scoring.prefix import PrefixBatch, cache_argument, output_cache, select_cache_rows
from auq.utils.io import CheckpointError

__all__ = ["DeepMembers"]

_CONFIG_NAME = "deep_members.json"


@torch.no_grad()
def _perturb(model: nn.Module, scale: float, generator: torch.Generator) -> None:
    """Add :func:`~auq.members.base.relative_noise` to every floating-point parameter."""
    for p in model.parameters():
        if p.is_floating_point() and p.numel() > 0:
            p.add_(relative_noise(p, scale, generator))


@register_members
class DeepMembers(MemberBackbone):
    """K full copies of the backbone, scored one after the other.

    Build with :meth:`build`. All K models train (``model`` is member 0,
    ``copies[k − 1]`` member k); :class:`~auq.RewardModel` saves member 0 as
    its backbone and :meth:`save_members` the others.

    Attributes
    ----------
    copies : nn.ModuleList
        Members 1 … K−1 (Hugging Face models of the same class as ``model``).
    """

    method = "deep"

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        *,
        n_members: int,
        init_noise: float = 0.01,
        seed: int = 0,
    ) -> DeepMembers:
        """Member 0 = ``backbone.model``; members 1 … K−1 perturbed deep copies.

        Parameters
        ----------
        backbone : Backbone
            A plain ``AutoModel`` backbone.
        n_members : int
            K ≥ 2 (memory and time grow K-fold).
        init_noise : float
            Copy k gets ``init_noise · rms(p) · N(0, 1)`` added to each parameter p
            (seed ``seed + k``); 0 gives exact copies.
        seed : int
        """
        check_n_members(n_members)
        if not init_noise >= 0:
            raise ValueError(f"init_noise must be >= 0, got {init_noise!r}")
        member = cls._adopt(backbone)
        member.n_members, member.init_noise, member.seed = n_members, float(init_noise), seed
        copies = []
        for k in range(1, n_members):
            model_k = copy.deepcopy(member.model)
            if init_noise > 0:
                _perturb(model_k, init_noise, torch.Generator().manual_seed(seed + k))
            copies.append(model_k)
        member.copies = nn.ModuleList(copies)
        member.set_trainable()
        return member.eval()

    @property
    def members(self) -> list[nn.Module]:
        """The K models, member 0 first."""
        return [self.model, *self.copies]

    def set_trainable(self) -> None:
        """Train every parameter of every member."""
        self.requires_grad_(True)

    def get_config(self) -> dict[str, Any]:
        return {"init_noise": self.init_noise, "seed": self.seed}

    @property
    def rows_per_item(self) -> int:
        """1: the members run one after the other, each on the B rows."""
        return 1

    def _member_states(self, kwargs: dict[str, Tensor]) -> Iterator[Tensor]:
        """Each member's last hidden states, (B, L, d), one model after the other."""
        for model in self.members:
            yield model(**kwargs).last_hidden_state

    def prefix_sharing_unsupported(self) -> str | None:
        return Backbone.prefix_sharing_unsupported(self)

    def forward_shared_prefix(self, batch: PrefixBatch) -> Tensor:
        """Features (K, n, d) of continuations, each member reusing its own prefix cache."""
        suffix = batch.suffix
        hidden = []
        for model in self.members:
            cache = output_cache(model(**batch.prefix, use_cache=True))
            kwargs = {
                "input_ids": suffix["input_ids"],
                "attention_mask": batch.model_mask,
                "position_ids": suffix["position_ids"],
                cache_argument(model): select_cache_rows(cache, batch.prefix_rows),
            }
            hidden.append(model(**kwargs).last_hidden_state)
        return self._pool_members(torch.stack(hidden), suffix["attention_mask"])

    # -- checkpoints --------------------------------------------------------------
    def save_members(self, directory: str | Path) -> None:
        """Write members 1 … K−1 with ``save_pretrained`` (safetensors) into ``member_k/``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for k, model in enumerate(self.copies, start=1):
            model.save_pretrained(out / f"member_{k}")
        meta = {"method": self.method, "n_members": self.n_members, **self.get_config()}
        (out / _CONFIG_NAME).write_text(json.dumps(meta, indent=2))

    def load_members(self, directory: str | Path) -> None:
        """Replace members 1 … K−1 by the models :meth:`save_members` wrote."""
        directory = Path(directory)
        loaded = []
        for k in range(1, self.n_members):
            path = directory / f"member_{k}"
            if not (path / "config.json").is_file():
                raise CheckpointError(
                    f"{path} holds no saved model; save_members writes member_1 … "
                    f"member_{self.n_members - 1} for n_members={self.n_members}"
                )
            try:
                model = type(self.model).from_pretrained(
                    path, dtype=self.model.dtype, use_safetensors=True
                )
            except Exception as err:  # damaged weights surface as many error types
                files = sorted(path.glob("*.safetensors"))
                where = files[0] if len(files) == 1 else path
                raise CheckpointError(f"{where}: cannot load member {k} ({err})") from None
            loaded.append(model.to(self.device).train(self.training))
        self.copies = nn.ModuleList(loaded)
        self.set_trainable()
