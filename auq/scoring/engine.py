"""The scoring engine: micro-batches through a model, fast and safe, in the caller's order.

Every path that turns texts into features runs here — ``RewardModel.score`` and
``predict``, the feature extraction of ``fit`` and ``calibrate``, and what is built
on them (best-of-n, trainers, the CLI, the reward server). One call:

1. plans micro-batches (:mod:`auq.scoring.batching` — length buckets under a token
   budget that counts the rows the model really runs; or prompt groups whose shared
   prefix runs once, :mod:`auq.scoring.prefix`);
2. runs each under ``torch.inference_mode`` and, on a GPU, bf16/fp16 autocast
   (:func:`autocast_context`; heads and uncertainty maths stay float32);
3. on an out-of-memory error halves the micro-batch and retries, and plans every
   later micro-batch under the budget that worked (``oom_backoff``) — nothing is
   lost, duplicated or reordered;
4. writes each result into its rows of one output, so the caller's order is kept.

:class:`ScoringOptions` holds the knobs; :class:`ScoringStats` reports what a call
did (micro-batches, padded and real tokens, out-of-memory retries, items that
shared a prefix) so that nothing happens silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auq.scoring.batching import PADDING_SIDES
from auq.utils.console import get_logger, progress_bar, warn_user
from auq.utils.validation import check_choice, check_positive_int

__all__ = [
    "PRECISIONS",
    "OutOfMemoryError",
    "ScoringOptions",
    "ScoringStats",
    "Work",
    "autocast_context",
    "run_work",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: what a failed allocation raises (``torch.OutOfMemoryError`` since torch 2.5)
OutOfMemoryError: type[RuntimeError] = getattr(
    torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
)

_log = get_logger("auq.scoring")


@dataclass
class ScoringOptions:
    """How the scoring engine runs (``rm.scoring``; ``score``/``predict`` override per call).

    Attributes
    ----------
    max_tokens : int
        Padded tokens per micro-batch, counting the rows the model really runs
        (K·B for backbone-level ensembles, T·B for MC dropout).
    batch_size : int or None
        Items per micro-batch at most (None: only the token budget limits it).
    bucketing : bool
        Sort items by length into micro-batches (minimal padding). False keeps the
        caller's order (a plain loop over batches; for comparisons).
    max_padding : float or None
        With bucketing, close a micro-batch before padding exceeds this fraction of
        its real tokens (once it holds an eighth of ``max_tokens``); None fills the
        budget whatever the padding (:func:`~auq.scoring.token_budget_batches`).
    padding_side : {"right", "left"}
        Either gives the same rewards; left padding passes position ids.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast of the backbone forward. ``"auto"``: bf16 (fp16 where bf16 is not
        supported) on a CUDA device when the weights are float32, else none.
        Heads and uncertainty maths are float32 whatever is chosen.
    prefix_sharing : {"auto", True, False}
        Run a prompt shared by several responses once and reuse its key/value cache
        (causal decoders, for the methods whose forward allows it). ``"auto"`` uses
        it where it applies; True refuses a model where it cannot.
    min_prefix_tokens : int
        Shortest shared prefix worth a separate pass.
    oom_backoff : bool
        Halve a micro-batch that runs out of memory and retry (True), or raise.
    compile : bool
        ``torch.compile`` the backbone model on first use (plain backbones).
    feature_cache : bool
        Reuse features of texts a frozen backbone has already encoded.
    feature_cache_bytes : int
        Memory the feature cache may hold (least recently used blocks are dropped).
    feature_cache_dir : str or None
        Also keep cached features on disk there (safetensors), across processes.
    """

    max_tokens: int = 16384
    batch_size: int | None = 256
    bucketing: bool = True
    max_padding: float | None = 0.1
    padding_side: str = "right"
    precision: str = "auto"
    prefix_sharing: bool | str = "auto"
    min_prefix_tokens: int = 8
    oom_backoff: bool = True
    compile: bool = False
    feature_cache: bool = True
    feature_cache_bytes: int = 1 << 30
    feature_cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_positive_int("max_tokens", self.max_tokens)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        check_choice("padding_side", self.padding_side, PADDING_SIDES)
        if self.max_padding is not None and not (
            isinstance(self.max_padding, int | float)
            and not isinstance(self.max_padding, bool)
            and 0 <= self.max_padding < float("inf")
        ):
            raise ValueError(
                f"max_padding must be a finite number >= 0 or None, got {self.max_padding!r}"
            )
        check_choice("precision", self.precision, PRECISIONS)
        if not (self.prefix_sharing == "auto" or isinstance(self.prefix_sharing, bool)):
            raise ValueError(
                f"prefix_sharing={self.prefix_sharing!r} is not supported; valid choices: "
                "'auto', True, False"
            )
        check_positive_int("min_prefix_tokens", self.min_prefix_tokens)
        check_positive_int("feature_cache_bytes", self.feature_cache_bytes, minimum=0)
        for name in ("bucketing", "oom_backoff", "compile", "feature_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.feature_cache_dir is not None:
            self.feature_cache_dir = str(self.feature_cache_dir)

    def replace(self, **changes: Any) -> ScoringOptions:
        """A validated copy with ``changes`` (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise TypeError(
                f"unknown scoring option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def coerce(cls, value: ScoringOptions | dict[str, Any] | None) -> ScoringOptions:
        """``ScoringOptions`` from itself, a dict of its fields, or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls().replace(**value)
        raise TypeError(
            f"scoring must be a ScoringOptions or a dict of its fields, got {type(value).__name__}"
        )


@dataclass
class ScoringStats:
    """What one scoring call did.

    Attributes
    ----------
    n_items : int
        Texts asked for.
    n_cached : int
        Texts whose features came from the feature cache.
    n_micro_batches : int
        Forwards run (after any out-of-memory splits).
    n_oom_retries : int
        Micro-batches that ran out of memory and were split and retried.
    n_prefix_shared : int
        Texts scored as a continuation of a shared prompt prefix.
    n_prefix_groups : int
        Shared prefixes run (once each).
    real_tokens : int
        Tokens of the texts run (shared prefixes counted once).
    padded_tokens : int
        Tokens the forwards ran, padding included, counting every row (K·B, T·B).
    precision : str
        The autocast dtype used (``"fp32"`` when none).
    """

    n_items: int = 0
    n_cached: int = 0
    n_micro_batches: int = 0
    n_oom_retries: int = 0
    n_prefix_shared: int = 0
    n_prefix_groups: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    precision: str = "fp32"

    def merge(self, other: ScoringStats) -> ScoringStats:
        """Counts of two calls together (e.g. streamed chunks)."""
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "precision"
        }
        return ScoringStats(**summed, precision=other.precision)


@dataclass
class Work:
    """One micro-batch for :func:`run_work`.

    Attributes
    ----------
    items : int array, shape (b,)
        The output rows (positions in the caller's order) this work fills.
    padded_tokens : int
        Tokens the forward runs, padding and every row included (the budget's unit).
    real_tokens : int
        Tokens of the texts.
    run : callable () -> Tensor
        The forward: features (..., b, d) for ``items`` in that order.
    split : callable () -> list of Work
        Two or more smaller works covering the same items (empty when it cannot split).
    n_prefix_shared, n_prefix_groups : int
        Prefix-sharing counts of this work.
    """

    items: np.ndarray
    padded_tokens: int
    real_tokens: int
    run: Callable[[], Tensor]
    split: Callable[[], list[Work]] = field(default=lambda: [])
    n_prefix_shared: int = 0
    n_prefix_groups: int = 0


def autocast_context(precision: str, device: torch.device, weight_dtype: torch.dtype):
    """The autocast context of ``precision`` for a forward on ``device``, and its name.

    Returns
    -------
    (context manager, str)
        ``nullcontext`` and ``"fp32"`` where no autocast applies.
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        if device.type != "cuda" or weight_dtype != torch.float32:  # the weights' own dtype
            names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
            return nullcontext(), names.get(weight_dtype, "fp32")
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return nullcontext(), "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, OutOfMemoryError):
        return True
    # some back-ends raise a plain RuntimeError for a failed allocation
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def run_work(
    works: list[Work],
    n_items: int,
    *,
    device: torch.device,
    precision: str = "auto",
    weight_dtype: torch.dtype = torch.float32,
    oom_backoff: bool = True,
    progress: bool | None = None,
    description: str = "scoring",
) -> tuple[Tensor, ScoringStats]:
    """Run micro-batches and assemble their features in the caller's order.

    Parameters
    ----------
    works : list of Work
        Together they cover ``range(n_items)`` exactly once.
    n_items : int
        N, the rows of the output.
    device : torch.device
        Where the forwards run (autocast's device type).
    precision : {"auto", "fp32", "bf16", "fp16"}
        See :class:`ScoringOptions`.
    weight_dtype : torch.dtype
        The backbone's weight dtype (``"auto"`` autocasts float32 weights only).
    oom_backoff : bool
        Split and retry a micro-batch that runs out of memory; after the first such
        error, works larger than the one that failed are split before they run.
    progress : bool or None
        Progress bar over the items; None: only on a terminal or in a notebook.
    description : str

    Returns
    -------
    features : Tensor, shape (N, d) or (S, N, d), float32 on ``device``
    stats : ScoringStats
    """
    autocast, precision_used = autocast_context(precision, device, weight_dtype)
    stats = ScoringStats(n_items=n_items, precision=precision_used)
    out: Tensor | None = None
    limit: int | None = None  # padded tokens that fit, learnt from out-of-memory errors
    pending = list(reversed(works))
    bar = progress_bar(total=n_items, enabled=progress, desc=description, unit="text")
    try:
        while pending:
            work = pending.pop()
            if limit is not None and work.padded_tokens > limit:
                parts = work.split()
                if parts:
                    pending.extend(reversed(parts))
                    continue
            phi = None
            try:
                with torch.inference_mode(), autocast:
                    phi = work.run()  # (..., b, d)
            except Exception as err:
                if not _is_out_of_memory(err):
                    raise
                parts = work.split() if oom_backoff else []
                if not parts:
                    raise _out_of_memory_error(work, oom_backoff) from err
            if phi is None:  # out of memory; the failed forward's tensors are released here
                _free_device_memory(device)
                stats.n_oom_retries += 1
                limit = min(limit or work.padded_tokens, work.padded_tokens // 2)
                _log.info("out of memory at %d padded tokens; retrying halves", work.padded_tokens)
                pending.extend(reversed(parts))
                continue
            if out is None:  # a normal tensor (not an inference one): heads may train on it
                out = torch.empty(
                    (*phi.shape[:-2], n_items, phi.shape[-1]), dtype=phi.dtype, device=phi.device
                )
            out[..., torch.as_tensor(work.items, device=out.device), :] = phi
            stats.n_micro_batches += 1
            stats.padded_tokens += work.padded_tokens
            stats.real_tokens += work.real_tokens
            stats.n_prefix_shared += work.n_prefix_shared
            stats.n_prefix_groups += work.n_prefix_groups
            bar.update(len(work.items))
    finally:
        bar.close()
    if stats.n_oom_retries:
        warn_user(
            f"scoring ran out of memory {stats.n_oom_retries} time(s) and retried with smaller "
            f"micro-batches (nothing was lost); micro-batches of at most {limit} padded tokens "
            f"fit: set max_tokens={limit} to skip the retries"
        )
    if out is None:
        raise ValueError("nothing to score: no items were given")
    return out, stats


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _out_of_memory_error(work: Work, oom_backoff: bool) -> RuntimeError:
    if oom_backoff:
        what = (
            f"a single text of {work.real_tokens} tokens ({work.padded_tokens} with every row) "
            "does not fit"
        )
        fix = "lower max_length, load the model in bfloat16, or use a larger device"
    else:
        what = f"a micro-batch of {work.padded_tokens} padded tokens does not fit"
        fix = "lower max_tokens, or allow oom_backoff=True to split it automatically"
    return OutOfMemoryError(f"out of memory while scoring: {what}; {fix}")
