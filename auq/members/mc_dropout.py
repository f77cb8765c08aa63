"""Monte Carlo dropout: T stochastic passes of one model (Gal & Ghahramani, 2016).

At inference the batch is repeated T times and run in **one** forward with only
the ``nn.Dropout`` modules in training mode (every other module stays in eval),
so each of the T·B rows draws its own dropout masks; the result is reshaped to
(T, B, L, d). In training mode (``.training`` is True, as inside
:func:`auq.heads.fitting.fit_pairs`) one ordinary dropout pass is enough: features of
shape (1, B, d), which an :class:`~auq.heads.EnsembleHead` with
``n_members=1`` broadcasts over.

Dropout must stay on. TRL's reward trainer disables dropout by default
(``disable_dropout=True``); this method sets the probability ``rate`` on every
``nn.Dropout`` module of the model and keeps them active in training *and* in
the inference passes.

Only the ``nn.Dropout`` modules are switched. Attention-probability dropout that
Hugging Face attention kernels apply functionally (``dropout=module.dropout.p
if module.training else 0``) reads the attention module's own flag, so it acts
during training but not in the inference passes.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from auq.backbone import Backbone
from auq.members.base import MemberBackbone, register_members

__all__ = ["MCDropoutMembers"]


@contextmanager
def _dropout_only_train(model: nn.Module):
    """Eval mode everywhere except the ``nn.Dropout`` modules; restores every flag after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _seeded(device: torch.device, seed: int):
    """Draw from ``seed`` on ``device`` (and the CPU) inside; restore the global RNG after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


@register_members
class MCDropoutMembers(MemberBackbone):
    """T stochastic dropout passes of one backbone, batched into one forward.

    Build with :meth:`build`. ``n_members`` is T, the number of passes at
    inference; in training mode the forward returns a single pass (1, B, d),
    so the head on top has ``n_members=1``. With ``rate=0`` all T passes equal
    the deterministic model.

    Attributes
    ----------
    dropouts : list of nn.Dropout
        The modules whose probability is ``rate``.
    """

    method = "mc_dropout"

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        *,
        n_members: int,
        rate: float = 0.1,
        seed: int | None = 0,
        train_backbone: bool = True,
    ) -> MCDropoutMembers:
        """Set dropout ``rate`` everywhere and score with T = ``n_members`` passes.

        Parameters
        ----------
        backbone : Backbone
            A plain ``AutoModel`` backbone with ``nn.Dropout`` modules.
        n_members : int
            T ≥ 2 passes at inference.
        rate : float
            Dropout probability in [0, 1), set on every ``nn.Dropout`` module.
        seed : int or None
            Seed of the inference masks (each call restarts from it, so scoring
            is reproducible; the global RNG is left untouched). None draws from
            the global RNG. Training uses the global RNG.
        train_backbone : bool
            Fine-tune every backbone weight (True, standard MC dropout) or keep
            it frozen (False: only the head trains, on stochastic features).
        """
        if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 2:
            raise ValueError(
                f"n_members must be >= 2 for an ensemble (T dropout passes), got {n_members!r}"
            )
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a dropout probability in [0, 1), got {rate!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        member = cls._adopt(backbone)
        dropouts = [m for m in member.model.modules() if isinstance(m, nn.Dropout)]
        if not dropouts and rate > 0:
            raise ValueError(
                f"{type(member.model).__name__} has no nn.Dropout modules, so uq='mc_dropout' "
                "cannot sample; use uq='lora', 'partial' or 'deep'"
            )
        for m in dropouts:
            m.p = float(rate)
        member.dropouts = dropouts
        member.n_members, member.rate = n_members, float(rate)
        member.seed, member.train_backbone = seed, bool(train_backbone)
        member.set_trainable()
        return member.eval()

    def set_trainable(self) -> None:
        """Train the whole backbone (``train_backbone=True``) or nothing in it."""
        self.model.requires_grad_(self.train_backbone)

    def get_config(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed, "train_backbone": self.train_backbone}

    def _member_hidden(self, kwargs: dict[str, Tensor]) -> Tensor:
        """(1, B, L, d) in training mode; (T, B, L, d) from one forward over T·B rows otherwise."""
        if self.training:
            return self.model(**kwargs).last_hidden_state.unsqueeze(0)
        t = self.n_members
        b = kwargs["input_ids"].shape[0]
        repeated = {name: x.repeat(t, *([1] * (x.ndim - 1))) for name, x in kwargs.items()}
        rng = nullcontext() if self.seed is None else _seeded(self.device, self.seed)
        with rng, _dropout_only_train(self.model):
            hidden = self.model(**repeated).last_hidden_state  # (T·B, L, d)
        return hidden.reshape(t, b, *hidden.shape[1:])
