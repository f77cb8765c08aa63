"""Preference optimisation with the reward model's uncertainty: best-of-n, DPO, the study.

* :class:`DPOTrainer` / :class:`DPOConfig` — offline DPO, optionally
  uncertainty-aware (soft labels, weights, pessimism from an auq reward model);
* :class:`OnlineDPOTrainer` / :class:`OnlineDPOConfig` — online DPO whose inner
  loop samples, scores with the uncertainty layer and pairs by a penalised reward;
* :mod:`auq.training.losses` — DPO, IPO and pessimistic losses as pure functions
  (usable from any trainer, TRL's included);
* :func:`best_of_n` — sample n responses per prompt, keep the argmax of a
  penalised reward; :class:`BestOfNResult` holds the picks and every candidate.
* :class:`Generator` — the sampling interface; :class:`HFGenerator` the default
  (any Hugging Face causal LM).
* :func:`expected_best_of_n`, :func:`best_of_n_kl`, :func:`best_of_n_kl_bound` —
  best-of-n curves over n from one pool of samples, in closed form.
* :func:`run_study` / :class:`StudyConfig` / :class:`StudyResult` — reward
  over-optimisation measured on the testbed's world (:mod:`auq.training.overoptimization`).
"""

from auq.training.best_of_n import BestOfNResult, best_of_n
from auq.training.dpo import DPOResult, DPOTrainer
from auq.training.dpo_config import DPOConfig, OnlineDPOConfig
from auq.training.generation import GenerationStats, Generator, HFGenerator
from auq.training.losses import dpo_loss, ipo_loss, pessimistic_dpo_loss
from auq.training.online_dpo import OnlineDPOResult, OnlineDPOTrainer
from auq.training.order_statistics import (
    best_of_n_kl,
    best_of_n_kl_bound,
    expected_best_of_n,
    max_rank_probabilities,
)
from auq.training.overoptimization import StudyConfig, StudyResult, run_study

__all__ = [
    "BestOfNResult",
    "DPOConfig",
    "DPOResult",
    "DPOTrainer",
    "GenerationStats",
    "Generator",
    "HFGenerator",
    "OnlineDPOConfig",
    "OnlineDPOResult",
    "OnlineDPOTrainer",
    "StudyConfig",
    "StudyResult",
    "best_of_n",
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "dpo_loss",
    "expected_best_of_n",
    "ipo_loss",
    "max_rank_probabilities",
    "pessimistic_dpo_loss",
    "run_study",
]
