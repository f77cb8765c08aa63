"""Preference optimisation with the reward model's uncertainty: best-of-n, the study.

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
from auq.training.generation import GenerationStats, Generator, HFGenerator
from auq.training.order_statistics import (
    best_of_n_kl,
    best_of_n_kl_bound,
    expected_best_of_n,
    max_rank_probabilities,
)
from auq.training.overoptimization import StudyConfig, StudyResult, run_study

__all__ = [
    "BestOfNResult",
    "GenerationStats",
    "Generator",
    "HFGenerator",
    "StudyConfig",
    "StudyResult",
    "best_of_n",
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "expected_best_of_n",
    "max_rank_probabilities",
    "run_study",
]
