"""``auq score``: stream a data set through a saved reward model into JSONL or Parquet.

Each input row (``prompt``, ``response``, optional id) becomes one output row
``{"id", "row", "mean", "std"}`` — ``"samples"`` (S floats) with ``--samples``,
``"reward"`` and ``"objective"`` with ``--objective`` (the penalised reward of
:func:`auq.objectives.penalized_reward`, computed per chunk from its prediction, and
the objective with the penalty it used, e.g. ``"lcb(k=1.0)"``, so that ``--resume``
refuses other penalty options).
Rows are read, scored and written a chunk at a time (:mod:`auq.scoring.stream`), so
the data never has to fit in memory and an interrupted run goes on with ``--resume``.
Under ``torchrun`` / ``accelerate launch`` the chunks are dealt to the processes, each
on its own device, and rank 0 merges their parts.

Everything is checked before the model loads: the model directory, the data file and
its first row, that the output can be written (and is new, or matches the data when
resuming), and every option.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auq.cli.errors import CliError, one_line
from auq.cli.inputs import check_model_dir
from auq.scoring.distributed import default_device, distributed_env, init_distributed
from auq.scoring.sources import Chunk, open_source
from auq.scoring.stream import ScoredChunk, ScoreStream, StreamResult
from auq.types import TruncationWarning

__all__ = ["ScoreSummary", "resolve_device", "score_saved_model", "summary_line"]

_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


@dataclass
class ScoreSummary:
    """What ``auq score`` did: the stream's result, the model's max_length, this rank."""

    result: StreamResult
    max_length: int
    rank: int
    world: int


def resolve_device(text: str | None, *, world: int = 1) -> torch.device:
    """The device of ``--device`` (None: :func:`default_device`, ``cuda:LOCAL_RANK`` or CPU).

    Under several processes a bare ``cuda`` means each rank's own GPU.

    Raises
    ------
    CliError
        For a name other than ``cpu``, ``cuda``, ``cuda:N``, or CUDA that is not there.
    """
    if text is None:
        return default_device()
    match = _DEVICE.fullmatch(text)
    if match is None:
        raise CliError(f"--device {text!r} is not supported; valid: cpu, cuda, cuda:N")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise CliError(
            f"--device {text}: CUDA is not available here (torch {torch.__version__}); use "
            "--device cpu"
        )
    count = torch.cuda.device_count()
    if match[1] is not None and int(match[1]) >= count:
        raise CliError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0..")
    return default_device() if match[1] is None and world > 1 else torch.device(text)


def _check_options(lam: float, k: float, beta: float, precision: str, objective: str | None):
    from auq.objectives import OBJECTIVES
    from auq.scoring.engine import PRECISIONS
    from auq.utils.validation import check_choice

    check_choice("--precision", precision, PRECISIONS)
    if objective is not None:
        check_choice("--objective", objective, OBJECTIVES)
    for name, value, low in (("--lam", lam, 0.0), ("--k", k, 0.0)):
        if not (value >= low and value < float("inf")):
            raise CliError(f"{name} must be a finite number >= 0, got {value!r}")
    if not (0 < beta < float("inf")):
        raise CliError(f"--beta must be a finite number > 0, got {beta!r}")


#: the penalty option each objective uses (``mean`` and ``wco`` have none)
_PENALTY = {"uwo": "lam", "lcb": "k", "effective": "beta"}


def _objective_label(objective: str, penalty: dict[str, float]) -> str:
    """The ``objective`` field: the name and the penalty it uses, ``"lcb(k=1.0)"``."""
    name = _PENALTY.get(objective)
    return objective if name is None else f"{objective}({name}={float(penalty[name])!r})"


def _load_model(model_dir: Path, device: torch.device, precision: str):
    from auq.models.reward_model import RewardModel

    try:
        rm = RewardModel.from_pretrained(model_dir, device=device)
    except Exception as err:  # a damaged directory fails in many ways; name it, keep the cause
        raise CliError(
            f"cannot load the reward model in {str(model_dir)!r}: {type(err).__name__}: "
            f"{one_line(err)}"
        ) from err
    # streamed texts are mostly seen once: caching them would only copy features to host memory
    rm.scoring = rm.scoring.replace(precision=precision, feature_cache=False)
    return rm


def _scorer(rm: Any, *, samples: bool, objective: str | None, penalty: dict, budget: dict):
    """Chunk → :class:`ScoredChunk` with mean, std [, samples] [, reward] and counts."""
    from auq.objectives import penalized_reward

    def score(chunk: Chunk) -> ScoredChunk:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)  # summed into the summary
            rp = rm.score(chunk.prompts, chunk.responses, progress=False, **budget)
        columns = {"mean": rp.mean.numpy(), "std": rp.std.numpy()}  # (N,) each
        if samples:
            columns["samples"] = rp.samples.T.numpy()  # (S, N) -> (N, S)
        if objective is not None:
            columns["reward"] = penalized_reward(rp, objective, **penalty).numpy()
        cut, stats = rp.truncation, rm.last_scoring_stats
        counts = {
            "prompts_truncated": 0 if cut is None else cut.n_prompt_truncated,
            "responses_truncated": 0 if cut is None else cut.n_response_truncated,
            "oom_retries": 0 if stats is None else stats.n_oom_retries,
        }
        return ScoredChunk(columns, counts)

    return score


def score_saved_model(
    model_dir: str | Path,
    data: str | Path,
    *,
    out: str | Path,
    resume: bool = False,
    samples: bool = False,
    objective: str | None = None,
    lam: float = 0.5,
    k: float = 1.0,
    beta: float = 1.0,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    chunk_size: int = 4096,
    id_field: str = "id",
    device: str | None = None,
    precision: str = "auto",
    progress: bool | None = None,
) -> ScoreSummary:
    """Score every row of ``data`` with the model in ``model_dir`` into ``out``.

    Parameters
    ----------
    model_dir : str or Path
        A directory written by ``save_pretrained``.
    data : str or Path
        JSONL (or ``.parquet``) rows with ``prompt``, ``response`` and optionally ``id_field``.
    out : str or Path
        JSONL output, or Parquet when it ends in ``.parquet``.
    resume : bool
        Go on after the rows an interrupted run wrote (checked against ``data``).
    samples : bool
        Also write the S member / posterior rewards of each row.
    objective : {"mean", "wco", "uwo", "lcb", "effective"}, optional
        Also write this penalised reward (with ``lam``, ``k``, ``beta``).
    batch_size, max_tokens : int, optional
        Micro-batch limits of the scoring engine.
    chunk_size : int
        Rows read, scored and written at a time.
    device : str, optional
        ``cpu``, ``cuda`` or ``cuda:N``; default: this rank's GPU, else the CPU.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast of the backbone forward.
    progress : bool or None
        Progress bar over rows; None shows it only on a terminal.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    CliError, FileNotFoundError, StreamError, CheckpointError
        For bad inputs, all found before the model loads.
    """
    _check_options(lam, k, beta, precision, objective)
    rank, world, _ = distributed_env()
    model_path = check_model_dir(str(model_dir))
    source = open_source(data, id_field=id_field)
    penalty = {"lam": lam, "k": k, "beta": beta}
    fields = ("mean", "std", *(("samples",) if samples else ()), *(("reward",) * bool(objective)))
    stream = ScoreStream(
        source,
        out,
        fields=fields,
        constants={"objective": _objective_label(objective, penalty)} if objective else None,
        chunk_size=chunk_size,
        resume=resume,
        rank=rank,
        world=world,
    )
    where = resolve_device(device, world=world)
    initialised = world > 1 and not torch.distributed.is_initialized()
    try:
        init_distributed()
    except RuntimeError as err:  # the launcher's variables are incomplete
        raise CliError(one_line(err)) from err
    try:
        rm = _load_model(model_path, where, precision)
        score = _scorer(
            rm,
            samples=samples,
            objective=objective,
            penalty=penalty,
            budget={"batch_size": batch_size, "max_tokens": max_tokens},
        )
        result = stream.run(score, progress=progress)
    finally:
        if initialised and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return ScoreSummary(result, rm.config.max_length, rank, world)


def summary_line(summary: ScoreSummary) -> str:
    """One line: rows written and skipped, truncation counts, time and rows per second."""
    r = summary.result
    c = r.counts
    rate = r.rows_written / r.seconds if r.seconds > 0 else float("inf")
    how = f" by {summary.world} processes" if summary.world > 1 else ""
    cut = (c.get("prompts_truncated", 0), c.get("responses_truncated", 0))
    truncated = (
        f"truncated to max_length={summary.max_length}: {cut[0]} prompts, {cut[1]} responses "
        f"(of {r.rows_scored} rows scored)"
        if any(cut)
        else "nothing truncated"
    )
    parts = [
        f"wrote {r.rows_written} of {r.n_rows} rows to {r.output}{how}",
        f"{r.rows_skipped} skipped by --resume (already written)",
        truncated,
    ]
    if r.torn_bytes:
        parts.append(f"dropped a torn last line ({r.torn_bytes} bytes)")
    if r.rows_nonfinite:
        parts.append(f"{r.rows_nonfinite} rows with non-finite values (null in JSONL)")
    if c.get("oom_retries"):
        parts.append(f"{c['oom_retries']} out-of-memory retries")
    parts.append(f"{r.seconds:.1f} s, {rate:.1f} rows/s")
    return "; ".join(parts)
