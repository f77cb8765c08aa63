"""``auq evaluate``: RewardBench-style accuracy and uncertainty quality of a saved reward model.

Data
    A JSONL or Parquet file (``.parquet`` / ``.pq``) with the benchmarks' columns —
    ``prompt``, ``chosen``, ``rejected``, optional ``subset`` and ``id`` — or the
    built-in set (``builtin``, ``builtin-ood``, with an optional ``:N``). ``rejected``
    is one response (a *pair* row, RewardBench) or a list of responses (a *best-of-k*
    row, RewardBench 2; ``chosen`` may then be a one-element list). Every row is
    validated before the model loads; a bad one stops the command with one line
    naming the row, the file (and line) and the field.

Scoring
    Pair rows go through ``RewardModel.predict`` (one prediction per pair, with the
    chosen/rejected covariance and the stored calibrator, if any); best-of-k rows
    through one ``RewardModel.score`` call that scores each (prompt, response) once.

Report
    Accuracy from the rewards (:mod:`auq.metrics.rewardbench`): a pair is right when
    the chosen reward is higher (a tie is wrong); a best-of-k row earns 1 when the
    chosen reward beats every rejected one, ``1/m`` in an m-way tie at the top.
    Accuracy per subset, RewardBench's weighted sections and score when every subset
    is a RewardBench subset, and overall (the mean over rows). On the pair rows:
    calibration of P(chosen ≻ rejected) (ECE, NLL, Brier, ... from
    :func:`auq.metrics.calibration_report`, swap-symmetrised), error-detection AUROC
    of the uncertainty score, and the risk–coverage curve with its AURC. With
    ``--out``: ``report.json``, ``rows.jsonl`` (one line per row) and PNGs —
    ``reliability.png``, ``reliability_before_after.png`` (when a calibrator was
    applied) and ``risk_coverage.png``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auq.cli.errors import CliError, one_line
from auq.cli.inputs import BUILTIN_SEED, OutputDir, check_model_dir, parse_builtin
from auq.data.jsonl import read_jsonl_rows
from auq.data.validation import RowError, validate_rows
from auq.types import UNCERTAINTY_SCORES
from auq.utils.io import atomic_write_text, strict_json, write_json

__all__ = [
    "EvaluationData",
    "add_parser",
    "evaluate_saved_model",
    "load_evaluation_data",
    "summary_lines",
]

REPORT_NAME, ROWS_NAME = "report.json", "rows.jsonl"
PLOT_NAMES = ("reliability.png", "reliability_before_after.png", "risk_coverage.png")
DEFAULT_UNCERTAINTY = "margin_std"
CURVE_POINTS = 101  # risk–coverage points kept in report.json


# -- data -----------------------------------------------------------------------------------


@dataclass
class EvaluationData:
    """N validated rows: pairs (``rejected`` one response) and best-of-k rows (a list).

    Attributes
    ----------
    prompts, chosen : list, length N
    rejected : list, length N
        A response (str or message list) for a pair row, a list of str for a best-of-k row.
    subsets, ids : list of length N, or None when the column is absent
    """

    prompts: list[Any]
    chosen: list[Any]
    rejected: list[Any]
    subsets: list[str] | None = None
    ids: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def is_list(self) -> np.ndarray:
        """Whether each row is a best-of-k row, bool shape (N,)."""
        return np.array([isinstance(r, list) and isinstance(r[0], str) for r in self.rejected])


def _str_list(value: Any) -> list[str] | None:
    """``value`` as a list when it is a list (or 1-D array) of str, else None."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _prepare_row(row: Any, implicit: bool, has_subset: bool) -> tuple[Any, list[str] | None]:
    """A row for :func:`validate_rows` (a best-of-k row stands in with its first rejected
    response) and its list of rejected responses (None for a pair row); a problem of
    the row becomes a :class:`RowError` placeholder, which ``validate_rows`` reports."""
    if not isinstance(row, Mapping):
        return row, None
    row = dict(row)
    try:
        chosen = _str_list(row.get("chosen"))
        if chosen is not None:
            if len(chosen) != 1:
                raise RowError(
                    "chosen",
                    f"{len(chosen)} chosen responses; give one (a list of several, as in "
                    "RewardBench 2's Ties subset, is not supported)",
                )
            row["chosen"] = chosen[0]
        rejected = row.get("rejected")
        if isinstance(rejected, list | tuple | np.ndarray) and len(rejected) == 0:
            raise RowError("rejected", "empty list: give one response or a list of responses")
        options = _str_list(rejected)
        if options is None and isinstance(rejected, list | tuple):
            kinds = [isinstance(v, str) for v in rejected]
            if any(kinds):  # responses, one of which is not a str
                j = kinds.index(False)
                raise RowError(
                    "rejected",
                    f"item {j} of the list is not a str (got {type(rejected[j]).__name__})",
                )
        if options is not None:
            if implicit:
                raise RowError(
                    "prompt", "a list of rejected responses needs an explicit 'prompt' column"
                )
            chosen_text = row.get("chosen")
            for j, text in enumerate(options):
                if not text.strip():
                    raise RowError("rejected", f"item {j} of the list is empty text")
                if isinstance(chosen_text, str) and text.strip() == chosen_text.strip():
                    raise RowError("rejected", f"item {j} of the list is identical to 'chosen'")
            row["rejected"] = options[0]
        if has_subset:
            subset = row.get("subset")
            if not isinstance(subset, str) or not subset.strip():
                got = "missing" if subset is None else f"{type(subset).__name__} {subset!r}"
                raise RowError("subset", f"expected a non-empty str (the column exists), got {got}")
    except RowError as err:
        return err, None
    return row, options


def _from_rows(rows: list[Any], where: Sequence[str] | None) -> EvaluationData:
    names = {str(k) for r in rows if isinstance(r, Mapping) for k in r}
    implicit, has_subset = "prompt" not in names, "subset" in names
    prepared = [_prepare_row(r, implicit, has_subset) for r in rows]
    cols = validate_rows([p[0] for p in prepared], "raise", where=where)["cols"]
    rejected = [
        cols["rejected"][i] if options is None else options
        for i, (_, options) in enumerate(prepared)
    ]
    return EvaluationData(
        prompts=cols["prompt"],
        chosen=cols["chosen"],
        rejected=rejected,
        subsets=[s.strip() for s in cols["subset"]] if has_subset else None,
        ids=cols.get("id"),
    )


def load_evaluation_data(source: str, *, option: str = "DATA") -> EvaluationData:
    """Read and validate ``source``: JSONL, Parquet, or the built-in set.

    Raises
    ------
    PreferenceDataError, CliError, FileNotFoundError
        Naming the row (its file and line) and the field, or what is wrong with the file.
    """
    builtin = parse_builtin(source)
    if builtin is not None:
        from auq.data.builtin import load_builtin_preferences

        domain, n = builtin
        ds = load_builtin_preferences(n, seed=BUILTIN_SEED, domain=domain)
        return EvaluationData(ds.prompts, ds.chosen, ds.rejected)
    path = Path(source).expanduser()
    if path.is_dir():
        raise CliError(f"{option} {source!r} is a directory; give a JSONL or Parquet file")
    if not path.is_file():
        raise FileNotFoundError(
            f"{option}: data file {source!r} not found; give a JSONL or Parquet file with "
            "prompt/chosen/rejected columns, or builtin, builtin:N, builtin-ood, builtin-ood:N"
        )
    from auq.scoring.sources import import_parquet, is_parquet

    if not is_parquet(path):
        return _from_rows(*read_jsonl_rows(path))
    pq = import_parquet(f"{option} {source!r}")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise CliError(
            f"{option} {source!r} is not a readable Parquet file ({one_line(err)})"
        ) from None
    return _from_rows(rows, [str(path)] * len(rows))


# -- scoring and metrics ---------------------------------------------------------------------


def _load_model(model_dir: Path, device: str | None):
    from auq.cli.score import resolve_device
    from auq.models.reward_model import RewardModel

    where = resolve_device(device)
    try:
        return RewardModel.from_pretrained(model_dir, device=where)
    except Exception as err:  # a damaged directory fails in many ways; name it, keep the cause
        raise CliError(
            f"cannot load the reward model in {str(model_dir)!r}: {type(err).__name__}: "
            f"{one_line(err)}"
        ) from err


def _risk_coverage(errors: np.ndarray, u: np.ndarray) -> dict[str, Any]:
    from auq.metrics import aurc, risk_coverage_curve

    coverage, risk = risk_coverage_curve(errors, u)
    keep = np.unique(np.linspace(0, len(risk) - 1, min(len(risk), CURVE_POINTS)).round())
    keep = keep.astype(int)
    return {"coverage": coverage[keep], "risk": risk[keep], "aurc": aurc(errors, u)}


def _score_pairs(rm: Any, data: EvaluationData, index: np.ndarray, opts: dict) -> dict[str, Any]:
    """Predict the pair rows; their credit, calibration, error detection, risk–coverage."""
    from auq.data import PreferenceDataset
    from auq.metrics import calibration_report
    from auq.metrics.rewardbench import pair_correct

    ds = PreferenceDataset.from_dict(
        {
            "prompt": [data.prompts[i] for i in index],
            "chosen": [data.chosen[i] for i in index],
            "rejected": [data.rejected[i] for i in index],
        }
    )
    raw = rm.predict(ds, calibrated=False, progress=opts["progress"], **opts["budget"])
    cal = rm.calibrator_ if opts["calibrated"] else None
    pred = raw if cal is None else cal.calibrate(raw)
    if raw.chosen is not None and raw.rejected is not None:
        chosen, rejected = raw.chosen.mean.numpy(), raw.rejected.mean.numpy()
    else:
        chosen, rejected = raw.margin_mean.numpy(), np.zeros(len(raw))
    u = pred.uncertainty(opts["uncertainty"]).double().numpy()
    errors = (~pred.correct).double().numpy()
    out = {
        "pred": pred,
        "raw": raw,
        "credit": pair_correct(chosen, rejected),
        "chosen": chosen,
        "rejected": rejected,
        "prob": pred.prob.numpy(),
        "uncertainty": u,
        "calibration": calibration_report(None, pred, uncertainty=u, n_bins=opts["n_bins"]),
        "risk_coverage": _risk_coverage(errors, u),
    }
    if pred is not raw:
        out["calibration_uncalibrated"] = calibration_report(None, raw, n_bins=opts["n_bins"])
    return out


def _score_lists(rm: Any, data: EvaluationData, index: np.ndarray, opts: dict) -> dict[str, Any]:
    """Score every response of the best-of-k rows once; each row's credit."""
    from auq.metrics.rewardbench import best_of_k_correct

    prompts, responses, starts = [], [], []
    for i in index:
        starts.append(len(responses))
        texts = [data.chosen[i], *data.rejected[i]]
        prompts += [data.prompts[i]] * len(texts)
        responses += texts
    rp = rm.score(prompts, responses, progress=opts["progress"], **opts["budget"])
    mean = rp.mean.double().numpy()  # (M,) over every response of every row
    ends = [*starts[1:], len(responses)]
    chosen = mean[starts]
    rejected = [mean[s + 1 : e] for s, e in zip(starts, ends, strict=True)]
    return {"credit": best_of_k_correct(chosen, rejected), "chosen": chosen, "rejected": rejected}


def _accuracy_report(data: EvaluationData, credit: np.ndarray, is_list: np.ndarray) -> dict:
    from auq.metrics.rewardbench import (
        is_rewardbench_subset,
        rewardbench_score,
        rewardbench_sections,
        subset_accuracy,
    )

    report: dict[str, Any] = {
        "overall": float(credit.mean()),
        "pairs": float(credit[~is_list].mean()) if (~is_list).any() else None,
        "best_of_k": float(credit[is_list].mean()) if is_list.any() else None,
    }
    if data.subsets is None:
        return {"accuracy": report, "subsets": None, "rewardbench": None}
    acc = subset_accuracy(credit, data.subsets)
    subsets = {}
    for name, value in acc.items():
        rows = np.array([s == name for s in data.subsets])
        kinds = {"pairs" if not x else "best_of_k" for x in is_list[rows]}
        subsets[name] = {
            "n": int(rows.sum()),
            "kind": kinds.pop() if len(kinds) == 1 else "mixed",
            "accuracy": value,
        }
    report["subset_mean"] = float(np.mean(list(acc.values())))
    rb = None
    if all(is_rewardbench_subset(name) for name in acc):
        sections = rewardbench_sections(acc)
        rb = {"sections": sections, "score": rewardbench_score(sections)}
        rb["complete"] = len(sections) == 4
    return {"accuracy": report, "subsets": subsets, "rewardbench": rb}


def evaluate_saved_model(
    model_dir: str | Path,
    data: str,
    *,
    out: str | Path | None = None,
    uncertainty: str = DEFAULT_UNCERTAINTY,
    calibrated: bool = True,
    n_bins: int = 15,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` on ``data``; write the report to ``out`` if given.

    Parameters
    ----------
    uncertainty : str
        The pairs' uncertainty score for error detection and risk–coverage (one of
        ``UNCERTAINTY_SCORES``).
    calibrated : bool
        Apply the calibrator stored with the model (if any) to the pairs' probabilities.

    Returns
    -------
    dict
        The report (strict-JSON-able): ``accuracy`` (overall, pairs, best_of_k,
        subset_mean), ``subsets``, ``rewardbench``, ``calibration``,
        ``calibration_uncalibrated``, ``risk_coverage`` and the counts.

    Raises
    ------
    CliError, FileNotFoundError, PreferenceDataError, CheckpointError
        For bad inputs, all found before the model loads; ``out`` is then not created.
    """
    from auq.utils.validation import check_choice, check_positive_int

    check_choice("--uncertainty", uncertainty, UNCERTAINTY_SCORES)
    check_positive_int("--n-bins", n_bins)
    model_path = check_model_dir(str(model_dir))
    output = None if out is None else OutputDir(str(out), option="--out")
    if output is not None:
        try:
            import matplotlib  # noqa: F401 - the figures need it; refuse before scoring
        except ImportError:
            raise CliError(
                "--out writes figures, which need matplotlib: pip install auq[plot]"
            ) from None
    rows = load_evaluation_data(data)
    rm = _load_model(model_path, device)
    opts = {
        "uncertainty": uncertainty,
        "calibrated": calibrated,
        "n_bins": n_bins,
        "progress": progress,
        "budget": {"batch_size": batch_size, "max_tokens": max_tokens},
    }
    is_list = rows.is_list
    pairs = _score_pairs(rm, rows, np.flatnonzero(~is_list), opts) if (~is_list).any() else None
    lists = _score_lists(rm, rows, np.flatnonzero(is_list), opts) if is_list.any() else None
    credit = np.empty(len(rows))
    if pairs is not None:
        credit[~is_list] = pairs["credit"]
    if lists is not None:
        credit[is_list] = lists["credit"]
    pred = None if pairs is None else pairs["pred"]
    k = [len(rows.rejected[i]) for i in np.flatnonzero(is_list)]
    report: dict[str, Any] = {
        "model": str(model_dir),
        "data": data,
        "uq": rm.config.uq,
        "n_rows": len(rows),
        "n_pairs": int((~is_list).sum()),
        "n_best_of_k": int(is_list.sum()),
        "k": {"min": min(k), "max": max(k)} if k else None,
        "calibrator": None if pred is None else pred.calibrator,
        "uncertainty": uncertainty,
        "n_bins": n_bins,
        **_accuracy_report(rows, credit, is_list),
        "calibration": None if pairs is None else pairs["calibration"],
        "calibration_uncalibrated": (pairs or {}).get("calibration_uncalibrated"),
        "risk_coverage": None if pairs is None else pairs["risk_coverage"],
    }
    report = strict_json(report)
    if output is not None:
        _write_outputs(output, report, rows, credit, is_list, pairs, lists)
    return report


# -- outputs ------------------------------------------------------------------------------------


def _row_records(rows, credit, is_list, pairs, lists) -> list[dict[str, Any]]:
    records, p, q = [], 0, 0
    for i in range(len(rows)):
        rec: dict[str, Any] = {"row": i}
        if rows.ids is not None:
            rec["id"] = rows.ids[i]
        if rows.subsets is not None:
            rec["subset"] = rows.subsets[i]
        if is_list[i]:
            rec |= {
                "kind": "best_of_k",
                "correct": credit[i],
                "chosen_reward": lists["chosen"][q],
                "rejected_reward": lists["rejected"][q],
            }
            q += 1
        else:
            rec |= {
                "kind": "pair",
                "correct": credit[i],
                "chosen_reward": pairs["chosen"][p],
                "rejected_reward": pairs["rejected"][p],
                "prob": pairs["prob"][p],
                "uncertainty": pairs["uncertainty"][p],
            }
            p += 1
        records.append(strict_json(rec))
    return records


def _write_outputs(output: OutputDir, report, rows, credit, is_list, pairs, lists) -> None:
    from auq.plotting import (
        plot_calibration_comparison,
        plot_reliability_diagram,
        plot_risk_coverage,
        pyplot,
    )

    plt = pyplot()
    records = _row_records(rows, credit, is_list, pairs, lists)
    with output.writing() as out:
        write_json(out / REPORT_NAME, report)
        atomic_write_text(out / ROWS_NAME, "".join(json.dumps(r) + "\n" for r in records))
        if pairs is None:
            return
        pred, raw, n_bins = pairs["pred"], pairs["raw"], report["n_bins"]
        figures = [
            plot_reliability_diagram(
                None,
                pred,
                n_bins=n_bins,
                name=pred.calibrator or "model",
                save_path=out / PLOT_NAMES[0],
            ),
            plot_risk_coverage(pred, score=report["uncertainty"], save_path=out / PLOT_NAMES[2]),
        ]
        if pred is not raw:
            labels = ("before", f"after ({pred.calibrator})")
            figures.append(
                plot_calibration_comparison(
                    None, raw, pred, n_bins=n_bins, labels=labels, save_path=out / PLOT_NAMES[1]
                )
            )
        for fig in figures:
            plt.close(fig)


# -- the command ------------------------------------------------------------------------------


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The short table printed by ``auq evaluate``."""

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    kinds = [f"{report['n_pairs']} pairs"] if report["n_pairs"] else []
    if report["n_best_of_k"]:
        k = report["k"]
        span = str(k["min"]) if k["min"] == k["max"] else f"{k['min']}-{k['max']}"
        kinds.append(f"{report['n_best_of_k']} best-of-k rows (k = {span} rejected)")
    calibrator = report["calibrator"] or "none"
    lines = [f"evaluated {report['n_rows']} rows: {', '.join(kinds)}; calibrator: {calibrator}"]
    width = max([len("overall"), *(len(s) for s in report["subsets"] or {})]) + 2
    lines.append(f"{'':{width}}{'rows':>6}{'accuracy':>10}")
    for name, s in (report["subsets"] or {}).items():
        lines.append(f"{name:{width}}{s['n']:>6}{num(s['accuracy']):>10}")
    rb = report["rewardbench"]
    if rb is not None:
        for name, value in rb["sections"].items():
            lines.append(f"{'[' + name + ']':{width}}{'':>6}{num(value):>10}")
        note = "" if rb["complete"] else f" ({len(rb['sections'])} of 4 sections)"
        lines.append(f"{'RewardBench':{width}}{'':>6}{num(rb['score']):>10}{note}")
    acc = report["accuracy"]
    lines.append(f"{'overall':{width}}{report['n_rows']:>6}{num(acc['overall']):>10}")
    cal = report["calibration"]
    if cal is not None:
        lines.append(
            f"pairs ({report['n_pairs']}): ECE {num(cal['ece'])}  NLL {num(cal['nll'])}  "
            f"Brier {num(cal['brier'])}  error AUROC ({report['uncertainty']}) "
            f"{num(cal.get('error_auroc'))}  AURC {num(report['risk_coverage']['aurc'])}"
        )
    return lines


def _run(args: argparse.Namespace) -> int:
    report = evaluate_saved_model(
        args.model_dir,
        args.data,
        out=args.out,
        uncertainty=args.uncertainty,
        calibrated=not args.uncalibrated,
        n_bins=args.n_bins,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        device=args.device,
        progress=False if args.no_progress else None,
    )
    for line in summary_lines(report):
        print(line)
    if args.out is not None:
        print(f"report, rows and plots in {args.out}")
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def add_parser(sub: argparse._SubParsersAction, debug: argparse.ArgumentParser) -> None:
    """Register ``auq evaluate``."""
    cmd = sub.add_parser(
        "evaluate",
        parents=[debug],
        help="RewardBench-style accuracy, calibration and uncertainty quality of a saved model",
        description="Score DATA (JSONL or Parquet with prompt, chosen, rejected and optional "
        "subset/id columns; rejected may be a list, RewardBench 2 style) with a saved reward "
        "model and report accuracy per subset and overall (with RewardBench's section "
        "weighting when the subsets are RewardBench's), best-of-k accuracy for list rows, and "
        "on the pair rows calibration (ECE, NLL, Brier), error-detection AUROC of the "
        "uncertainty and risk-coverage. --out writes report.json, rows.jsonl and PNGs.",
    )
    cmd.add_argument("model_dir", metavar="MODEL_DIR", help="a directory from save_pretrained")
    cmd.add_argument(
        "data",
        metavar="DATA",
        help="JSONL or Parquet file, or builtin, builtin:N, builtin-ood, builtin-ood:N",
    )
    cmd.add_argument("--out", default=None, metavar="DIR", help="where the report goes")
    cmd.add_argument(
        "--uncertainty",
        choices=UNCERTAINTY_SCORES,
        default=DEFAULT_UNCERTAINTY,
        help=f"the pairs' uncertainty score for error detection (default {DEFAULT_UNCERTAINTY})",
    )
    cmd.add_argument(
        "--uncalibrated",
        action="store_true",
        help="ignore the calibrator stored with the model (calibrator.json)",
    )
    cmd.add_argument(
        "--n-bins", type=_positive_int, default=15, metavar="N", help="ECE bins (default 15)"
    )
    cmd.add_argument(
        "--batch-size", type=_positive_int, default=None, metavar="N", help="texts per batch"
    )
    cmd.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="padded tokens per micro-batch",
    )
    cmd.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: GPU if any)")
    cmd.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    cmd.set_defaults(func=_run)
