"""The main job on the embedded default: train a head-ensemble reward model on the
built-in preference data with the packaged MiniLM backbone and report how well it
ranks (against the gold ceiling) and how its uncertainty behaves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from auq.cli.errors import CliError, one_line
from auq.cli.inputs import OutputDir
from auq.metrics import error_detection_auroc, ood_auroc

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """Sizes and settings of the demo (defaults take ~2–3 minutes on 2 CPU cores)."""

    n_train: int = 1200
    n_eval: int = 300
    n_test: int = 800
    n_ood: int = 300
    n_members: int = 8
    hidden_size: int | None = None
    epochs: int = 40
    seed: int = 0
    backbone: str | None = None
    save_to: str | None = None
    progress: bool | None = None  # None: bars only on a terminal (auq.utils.console)


def _check(config: DemoConfig) -> OutputDir | None:
    """Validate the sizes and ``save_to`` before anything loads."""
    for name in ("n_train", "n_eval", "n_test", "n_ood", "n_members", "epochs"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            option = "--members" if name == "n_members" else "--" + name.replace("_", "-")
            raise CliError(f"{option} must be an integer >= 1, got {value!r}")
    if config.hidden_size is not None and (
        isinstance(config.hidden_size, bool)
        or not isinstance(config.hidden_size, int)
        or config.hidden_size < 1
    ):
        raise CliError(f"--hidden-size must be an integer >= 1, got {config.hidden_size!r}")
    return None if config.save_to is None else OutputDir(config.save_to, option="--save")


def run_demo(config: DemoConfig | None = None) -> dict[str, float]:
    """Train, evaluate and summarise; returns the figures it prints."""
    from auq.data.builtin import gold_ceiling, load_builtin_preferences
    from auq.models.reward_model import RewardModel
    from auq.utils.defaults import default_backbone_path

    config = config or DemoConfig()
    save_to = _check(config)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    n_in = config.n_train + config.n_eval + config.n_test
    data = load_builtin_preferences(n_in, seed=config.seed, domain="in")
    train, rest = data.split(test_size=config.n_eval + config.n_test, seed=config.seed)
    val, test = rest.split(test_size=config.n_test, seed=config.seed)
    ood = load_builtin_preferences(config.n_ood, seed=config.seed + 1, domain="ood")
    backbone = config.backbone or str(default_backbone_path())
    print(f"backbone: {backbone}")
    print(
        f"data: {len(train)} train / {len(val)} validation / {len(test)} test pairs, "
        f"{len(ood)} out-of-distribution pairs"
    )

    try:
        rm = RewardModel.from_backbone(
            backbone,
            uq="heads",
            n_members=config.n_members,
            hidden_size=config.hidden_size,
            seed=config.seed,
        )
    except (OSError, ValueError) as err:  # not found, not a model, offline hub
        raise CliError(f"cannot load the backbone {backbone!r}: {one_line(err)}") from err
    rm.fit(train, eval_dataset=val, epochs=config.epochs, progress=config.progress)
    test_pred = rm.predict(test, progress=config.progress)
    ood_pred = rm.predict(ood, progress=config.progress)

    gold_prefers_chosen = np.asarray(test.column("gold_chosen")) > np.asarray(
        test.column("gold_rejected")
    )
    predicted_chosen = test_pred.correct.numpy()
    errors = ~predicted_chosen

    def scores(score: str) -> tuple[np.ndarray, np.ndarray]:
        return test_pred.uncertainty(score).numpy(), ood_pred.uncertainty(score).numpy()

    response_in, response_ood = scores("response_std")  # OOD detection: the stronger score
    margin_in, margin_ood = scores("margin_std")
    results = {
        "heldout_accuracy": float(predicted_chosen.mean()),
        "gold_ceiling": gold_ceiling(test),
        "agreement_with_gold": float((predicted_chosen == gold_prefers_chosen).mean()),
        "ood_accuracy": ood_pred.accuracy(),
        "response_std_in": float(response_in.mean()),
        "response_std_ood": float(response_ood.mean()),
        "margin_std_in": float(margin_in.mean()),
        "margin_std_ood": float(margin_ood.mean()),
        "epistemic_entropy_in": float(test_pred.epistemic.mean()),
        "epistemic_entropy_ood": float(ood_pred.epistemic.mean()),
        "ood_auroc_response_std": ood_auroc(response_in, response_ood),
        "ood_auroc_margin_std": ood_auroc(margin_in, margin_ood),
        # errors are found by the predictive entropy; disagreement alone tracks them weakly
        "error_auroc_total": _auroc(errors, test_pred.uncertainty("total").numpy()),
        "error_auroc_margin_std": _auroc(errors, margin_in),
        "seconds": time.perf_counter() - start,
    }
    _print_report(results, rm)
    if save_to is not None:
        with save_to.writing() as path:
            rm.save_pretrained(path)
        print(f"saved to {path.resolve()}")
    return results


def _auroc(errors: np.ndarray, scores: np.ndarray) -> float:
    """Error-detection AUROC, NaN when every prediction is right (or wrong)."""
    return error_detection_auroc(errors, scores) if 0 < errors.sum() < len(errors) else float("nan")


def _print_report(r: dict[str, float], rm) -> None:
    best = rm.history_.best_epoch if rm.history_ is not None else None
    print()
    print(f"Reward model: {rm.config.n_members} heads on a frozen backbone (best epoch {best})")
    print(
        f"  held-out accuracy           {r['heldout_accuracy']:.3f}   "
        f"(gold-reward ceiling {r['gold_ceiling']:.3f}, chance 0.500)"
    )
    print(f"  agreement with gold reward  {r['agreement_with_gold']:.3f}")
    print(f"  out-of-distribution acc.    {r['ood_accuracy']:.3f}")
    print("Uncertainty (epistemic, across members)")
    print(
        f"  responses' reward std in / OOD  {r['response_std_in']:.3f} / "
        f"{r['response_std_ood']:.3f}   (std(r_chosen) + std(r_rejected))"
    )
    print(f"  margin std  in / OOD            {r['margin_std_in']:.3f} / {r['margin_std_ood']:.3f}")
    print(
        f"  mutual info in / OOD            {r['epistemic_entropy_in']:.4f} / "
        f"{r['epistemic_entropy_ood']:.4f} nats"
    )
    print(
        f"  OOD detection AUROC             {r['ood_auroc_response_std']:.3f} (responses' std), "
        f"{r['ood_auroc_margin_std']:.3f} (margin std)"
    )
    print(
        f"  error detection AUROC           {r['error_auroc_total']:.3f} (predictive entropy), "
        f"{r['error_auroc_margin_std']:.3f} (margin std)"
    )
    print(f"done in {r['seconds']:.0f} s")
