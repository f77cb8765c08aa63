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
by 1/(1−p) as ``nn.Dropout`` does. The global RNG is not touched. A module's
probability is read at call time (``module.p``); ``p = 0`` skips it.

Cost
----
The forward over T·B rows is the bound (T forwards' FLOPs); the masks are
what comes on top. A pass's scale ``keep · 1/(1−p)`` has the shape of one
row, (T, *row), and is broadcast over the B rows: applying it is one
multiplication over the module's output, the only extra pass over the
activations (in place would be cheaper, but the input of a dropout module is
not ours to overwrite). Because the mask never depends on the batch, the
scales are also **kept across forwards** (``_ScaleCache``, at most
:data:`MASK_CACHE_BYTES`): every later micro-batch and scoring call slices
them (the mask of a shorter shape is the leading block of a longer one)
instead of re-hashing T·(row) elements in int64 arithmetic (~14 passes, more
than the application itself for small micro-batches). Measured on MiniLM
(128 built-in texts, max_length 128, T = 4, CPU time, one thread, minimum of
7 interleaved runs), against the bare forward over T·B rows (``rate=0``):
micro-batches of 16 items 1.022× → 1.001×; single items 1.180× → 1.038×.

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

import math
from collections.abc import Callable
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
#: bytes of dropout scales an MCDropoutMembers keeps across forwards (see _ScaleCache)
MASK_CACHE_BYTES = 64 << 20


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
    # (h >> 8) >= t  ⇔  h >= t·2⁸ for 0 ≤ h < 2³²: the same bits, one int64 pass fewer
    return h >= threshold << (32 - _BITS)


def _dropout_scale(
    keys: list[int], shape: tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``keep · 1/(1−p)`` in ``dtype``, shape (T, *shape): what a pass multiplies its rows by."""
    return dropout_keep_mask(keys, shape, p, device=device).to(dtype).mul_(1.0 / (1.0 - p))


class _ScaleCache:
    """Dropout scales kept across forwards: one (T, *shape) tensor per module call.

    A pass's mask depends on (seed, module, call, t, coordinates) only, never on
    the batch, so every micro-batch of a scoring call — and every later call —
    multiplies by the same scales, and the scale of a shape is the leading block
    of the scale of any larger one. An entry, keyed by (module index, call index,
    p, dtype), therefore serves every shape up to its own as a sliced view (no
    copy) and grows to the element-wise maximum when a larger shape comes.
    Entries are ordinary tensors (built outside inference mode) that do not
    require grad, so a forward with autograd on may use them too. At most
    ``max_bytes`` are kept; a scale that would exceed it is computed for its call
    only. Another (seed, T, device) empties the cache.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: dict[tuple, Tensor] = {}
        self.nbytes = 0
        self.config: tuple | None = None

    def get(
        self,
        config: tuple[int, int, torch.device],
        key: tuple,
        shape: tuple[int, ...],
        compute: Callable[[tuple[int, ...]], Tensor],
    ) -> Tensor:
        """The scale of ``shape``, (T, *shape), for ``config`` = (seed, T, device).

        ``compute(shape)`` builds a scale on a miss.
        """
        if config != self.config:
            self.entries.clear()
            self.nbytes, self.config = 0, config
        block = (slice(None), *(slice(0, n) for n in shape))
        entry = self.entries.get(key)
        if entry is not None and entry.ndim != len(shape) + 1:
            entry = None  # another rank of input (a model that folds axes differently)
        if entry is not None and all(c >= n for c, n in zip(entry.shape[1:], shape, strict=True)):
            return entry[block]
        grown = shape if entry is None else tuple(map(max, entry.shape[1:], shape))
        old = 0 if entry is None else entry.numel() * entry.element_size()
        size = config[1] * math.prod(grown) * key[-1].itemsize  # T · elements · dtype size
        if self.nbytes - old + size > self.max_bytes:
            return compute(shape)  # too large to keep: for this call only
        with torch.inference_mode(False):  # an ordinary tensor, usable outside inference mode
            scale = compute(grown)
        self.entries[key] = scale
        self.nbytes += size - old
        return scale[block]


class _SharedMasks:
    """Forward hooks that apply (seed, module, call, t, coordinates)-keyed masks."""

    def __init__(
        self,
        dropouts: list[nn.Dropout],
        *,
        seed: int,
        n_passes: int,
        rows: int,
        scales: _ScaleCache,
    ):
        self.dropouts, self.seed, self.t, self.rows = dropouts, seed, n_passes, rows
        self.scales = scales
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

            def compute(size: tuple[int, ...]) -> Tensor:
                keys = _pass_keys(self.seed, index, call, self.t)
                return _dropout_scale(keys, size, p, x.dtype, x.device)

            config, key = (self.seed, self.t, x.device), (index, call, p, x.dtype)
            scale = self.scales.get(config, key, shape, compute)  # (T, extra, …)
            out = x.reshape(self.t, self.rows, *shape) * scale.unsqueeze(1)  # one pass over x
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
        member._scales = _ScaleCache(MASK_CACHE_BYTES)  # the inference passes' dropout scales
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
        masks = _SharedMasks(
            self.dropouts, seed=_check_seed(self.seed), n_passes=t, rows=b, scales=self._scales
        )
        with masks, _all_eval(self.model):
            hidden = self.model(**repeated).last_hidden_state  # (T·B, L, d)
        return hidden.reshape(t, b, *hidden.shape[1:])
