"""Monte Carlo dropout: T stochastic passes of one model (Gal & Ghahramani, 2016).

Inference
---------
The batch of B rows is repeated T times and run in **one** forward over T·B
rows (pass-major: rows ``t·B … t·B+B−1`` are pass t), every module in eval
mode. During that forward each ``nn.Dropout`` module multiplies its input by a
mask that is a deterministic function of

    (seed, module index, call index, pass t, the element's coordinates on the non-batch axes)

— for a hidden-state dropout the coordinates are (sequence position, hidden
unit); for an attention-probability ``nn.Dropout`` (head, query, key). The mask
never depends on the row, so

* every item scored together sees the **same** mask in pass t: chosen and
  rejected share each draw and the covariance of Δ = r(chosen) − r(rejected)
  is kept (two identical texts have Δ = 0 in every pass);
* an item's T samples do not depend on the batch it is scored in (size,
  position, padded length, micro-batching): with right padding a token's
  coordinates are the same in any batch.

The mask bits come from a counter-based hash in integer torch arithmetic (no
RNG state): a 32-bit integer mixer (two multiply–xorshift rounds) folds the
key of (seed, module, call, t) with one coordinate axis at a time, the top 24
bits give u ∈ [0, 1) and elements with u < p are dropped; kept ones are scaled
by 1/(1−p) as ``nn.Dropout`` does. The mask is computed once per pass and
broadcast over the B rows, so its cost is T·(elements of one row), not T·B.
The global RNG is not touched. A module's probability is read at call time
(``module.p``); ``p = 0`` skips it.

If a model folds another axis into the batch one (``view(B·H, …)``), the
extra factor is treated as one more coordinate axis; an input whose first axis
is not a multiple of T·B is refused with a message naming the module.

Training
--------
In training mode (``.training`` is True, as inside the fine-tuning loop) one
ordinary dropout pass is enough: features of shape (1, B, d), which an
:class:`~auq.heads.EnsembleHead` with ``n_members=1`` broadcasts over. It
draws from the global RNG like any ``nn.Dropout``.

Dropout must stay on. TRL's reward trainer disables dropout by default
(``disable_dropout=True``); this method sets the probability ``rate`` on every
``nn.Dropout`` module of the model and keeps them active in training *and* in
the inference passes.

Only the ``nn.Dropout`` modules are stochastic at inference. Attention-probability
dropout that Hugging Face attention kernels apply functionally (``dropout=
module.dropout.p if module.training else 0``) reads the attention module's own
flag, so it acts during training but not in the inference passes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from auq.backbone import Backbone
from auq.members.base import MemberBackbone, check_n_members, register_members

__all__ = ["MCDropoutMembers", "dropout_keep_mask"]

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1  # odd 32-bit constant spreading consecutive coordinates
_KEY_SALT = 0x6A09E667
_BITS = 24  # resolution of u = top 24 bits / 2^24


def _mix32(x):
    """A bijective 32-bit integer mixer (xorshift-multiply, two rounds).

    Works on Python ints and on int64 tensors holding values in [0, 2³²): both
    multipliers are below 2³¹, so no product overflows int64.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def _mix32_(x: Tensor) -> Tensor:
    """:func:`_mix32` in place on an int64 tensor (fewer temporaries on the large masks)."""
    x ^= x >> 16
    x.mul_(0x21F0AAAD).bitwise_and_(_M32)
    x ^= x >> 15
    x.mul_(0x735A2D97).bitwise_and_(_M32)
    x ^= x >> 15
    return x


def _fold(key: int, value: int) -> int:
    return _mix32(key ^ _mix32((value * _GOLDEN + _KEY_SALT) & _M32))


def _pass_keys(seed: int, module: int, call: int, n_passes: int) -> list[int]:
    """32-bit keys of (seed, module index, call index, t) for t = 0 … T−1."""
    key = _fold(_fold(0, seed & _M32), (seed >> 32) & _M32)
    key = _fold(_fold(key, module), call)
    return [_fold(key, t) for t in range(n_passes)]


def dropout_keep_mask(
    keys: list[int], shape: tuple[int, ...], p: float, device: torch.device | str | None = None
) -> Tensor:
    """Keep-masks of T passes for elements with coordinates in ``shape``, shape (T, *shape).

    Element (t, c₁, …, c_n) is kept unless u < p, where u is the top 24 bits of
    h = mix(… mix(mix(keys[t] ^ g(c₁)) ^ g(c₂)) … ^ g(c_n)) over 2²⁴ (``mix``
    a 32-bit integer bijection, g(c) = mix(c·φ + s)). Each element is a
    function of its own coordinates only, so the mask of a shorter shape is the
    leading block of the mask of a longer one.

    Parameters
    ----------
    keys : list of int
        One 32-bit key per pass (T).
    shape : tuple of int
        The non-batch axes.
    p : float
        Drop probability in [0, 1).
    device : torch.device or str, optional

    Returns
    -------
    Tensor of bool, shape (T, *shape).
    """
    ndim = len(shape)
    h = torch.tensor(keys, dtype=torch.int64, device=device).view(-1, *([1] * ndim))
    for axis, size in enumerate(shape):
        coord = torch.arange(size, dtype=torch.int64, device=device)
        coord = _mix32((coord * _GOLDEN + _KEY_SALT + axis) & _M32)
        h = _mix32_(h ^ coord.view(size, *([1] * (ndim - 1 - axis))))
    threshold = round(p * (1 << _BITS))
    return (h >> (32 - _BITS)) >= threshold


class _SharedMasks:
    """Forward hooks that apply (seed, module, call, t, coordinates)-keyed masks."""

    def __init__(self, dropouts: list[nn.Dropout], *, seed: int, n_passes: int, rows: int):
        self.dropouts, self.seed, self.t, self.rows = dropouts, seed, n_passes, rows
        self.calls: dict[int, int] = {}
        self.handles: list[Any] = []

    def _hook(self, index: int):
        def apply(module: nn.Dropout, args: tuple, output: Tensor) -> Tensor:
            x = args[0]
            p = float(module.p)
            call = self.calls.get(index, 0)
            self.calls[index] = call + 1
            if p == 0:
                return output
            n = self.t * self.rows
            if x.ndim == 0 or x.shape[0] % n:
                raise RuntimeError(
                    f"uq='mc_dropout' needs the batch on axis 0 of every nn.Dropout input; "
                    f"dropout module #{index} got shape {tuple(x.shape)} for "
                    f"{self.t} passes × {self.rows} rows"
                )
            extra = x.shape[0] // n  # an axis folded into the batch one (e.g. heads)
            shape = (extra, *x.shape[1:])
            keys = _pass_keys(self.seed, index, call, self.t)
            keep = dropout_keep_mask(keys, shape, p, device=x.device)  # (T, extra, *rest)
            scale = keep.to(x.dtype) * (1.0 / (1.0 - p))
            out = x.reshape(self.t, self.rows, *shape) * scale.unsqueeze(1)
            return out.reshape(x.shape)

        return apply

    def __enter__(self) -> _SharedMasks:
        # prepend: hooks the user registered see the masked output
        self.handles = [
            m.register_forward_hook(self._hook(i), prepend=True)
            for i, m in enumerate(self.dropouts)
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def _all_eval(model: nn.Module):
    """Every module in eval mode inside; restores each flag after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"seed must be an int >= 0 (it keys the inference dropout masks; a fixed seed keeps "
            f"chosen/rejected and micro-batches on the same masks), got {seed!r}"
        )
    return seed


@register_members
class MCDropoutMembers(MemberBackbone):
    """T stochastic dropout passes of one backbone, batched into one forward.

    Build with :meth:`build`. ``n_passes`` (= ``n_samples``) is T, the number of
    passes at inference; in training mode the forward returns a single pass
    (1, B, d), so the head on top has ``n_members=1``. With ``rate=0`` all T
    passes equal the deterministic model.

    Attributes
    ----------
    n_passes : int
        T, the stochastic passes of the inference forward.
    rate : float
        The dropout probability set on every ``nn.Dropout`` module.
    seed : int
        Key of the inference masks (the same masks on every call).
    dropouts : list of nn.Dropout
        The modules whose probability is ``rate``, in ``model.modules()`` order
        (the position is the module index of the masks).
    """

    method = "mc_dropout"

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        *,
        n_passes: int,
        rate: float = 0.1,
        seed: int = 0,
        train_backbone: bool = True,
    ) -> MCDropoutMembers:
        """Set dropout ``rate`` everywhere and score with T = ``n_passes`` passes.

        Parameters
        ----------
        backbone : Backbone
            A plain ``AutoModel`` backbone with ``nn.Dropout`` modules.
        n_passes : int
            T ≥ 2 passes at inference.
        rate : float
            Dropout probability in [0, 1), set on every ``nn.Dropout`` module.
        seed : int
            Key (≥ 0; its lowest 64 bits count) of the inference masks: every
            call uses the same T masks, so scoring is reproducible and
            batch-independent; another seed draws other masks. Training uses
            the global RNG.
        train_backbone : bool
            Fine-tune every backbone weight (True, standard MC dropout) or keep
            it frozen (False: only the head trains, on stochastic features).
        """
        check_n_members(n_passes, what="n_passes (T dropout passes)")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a dropout probability in [0, 1), got {rate!r}")
        _check_seed(seed)
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
        member.n_passes, member.rate = n_passes, float(rate)
        member.seed, member.train_backbone = seed, bool(train_backbone)
        member.set_trainable()
        return member.eval()

    @property
    def n_samples(self) -> int:
        """Feature sets the inference forward returns: T = ``n_passes``."""
        return self.n_passes

    def set_trainable(self) -> None:
        """Train the whole backbone (``train_backbone=True``) or nothing in it."""
        self.model.requires_grad_(self.train_backbone)

    def get_config(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed, "train_backbone": self.train_backbone}

    def _check_left_padding(self) -> None:
        raise ValueError(
            "uq='mc_dropout' keys its dropout masks by token position, so left padding would "
            "move tokens onto other masks; use padding_side='right'"
        )

    def _member_hidden(self, kwargs: dict[str, Tensor]) -> Tensor:
        """(1, B, L, d) in training mode; (T, B, L, d) from one forward over T·B rows otherwise."""
        if self.training:
            return self.model(**kwargs).last_hidden_state.unsqueeze(0)
        t = self.n_passes
        b = kwargs["input_ids"].shape[0]
        repeated = {name: x.repeat(t, *([1] * (x.ndim - 1))) for name, x in kwargs.items()}
        masks = _SharedMasks(self.dropouts, seed=_check_seed(self.seed), n_passes=t, rows=b)
        with masks, _all_eval(self.model):
            hidden = self.model(**repeated).last_hidden_state  # (T·B, L, d)
        return hidden.reshape(t, b, *hidden.shape[1:])
