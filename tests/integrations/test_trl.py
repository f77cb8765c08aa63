"""auq.integrations.trl: an auq reward model as TRL's ``reward_funcs`` (GRPO, RLOO, Online DPO).

Direct calls use the keyword arguments TRL passes; the trainer runs are real TRL
trainers on a tiny GPT-2 policy, CPU only, a couple of steps each.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import auq
from auq.calibration import SpreadScaler, TemperatureScaler
from auq.integrations.trl import reward_function
from auq.objectives import OBJECTIVES, penalized_reward
from auq.types import TruncationWarning

trl = pytest.importorskip("trl")

PROMPTS = ["How do I cook rice?", "How do I learn a language?"]
ANSWERS = [
    " Rinse the rice, use one and a half cups of water per cup, simmer covered.",
    " I am not sure, it depends.",
    " Write small programs every day.",
    " That is a stupid question.",
]
# TRL's layout with num_generations=2: each prompt repeated, its completions consecutive
PLAIN_PROMPTS = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
CONV_PROMPTS = [[{"role": "user", "content": p}] for p in PLAIN_PROMPTS]
CONV_COMPLETIONS = [[{"role": "assistant", "content": a.strip()}] for a in ANSWERS]


def _rows(kind):
    if kind == "plain":
        return PLAIN_PROMPTS, list(ANSWERS)
    return CONV_PROMPTS, CONV_COMPLETIONS


def _trl_kwargs(completions, logged):
    """What TRL's GRPOTrainer._calculate_rewards passes besides prompts and completions."""
    from transformers import TrainerState

    return {
        "completion_ids": [[1, 2, 3]] * len(completions),
        "trainer_state": TrainerState(),
        "log_extra": lambda column, values: None,
        "log_metric": lambda name, value: logged.setdefault(name, []).append(value),
        "topic": ["cooking", "cooking", "learning", "learning"],  # an extra dataset column
    }


@pytest.fixture(scope="module")
def rm(tiny_gpt2_dir, builtin_small):
    """A tiny GPT-2 backbone (chat template) with 4 ensemble heads, fitted briefly."""
    train, _ = builtin_small
    model = auq.RewardModel.from_backbone(tiny_gpt2_dir, uq="heads", n_members=4)
    return model.fit(train, epochs=2, progress=False)


@pytest.fixture(scope="module")
def laplace_rm(tiny_gpt2_dir, builtin_small):
    train, _ = builtin_small
    return auq.RewardModel.from_backbone(tiny_gpt2_dir, uq="laplace").fit(train, progress=False)


# -- direct calls, as TRL makes them ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "conversational"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_call_equals_penalized_score(rm, kind, objective):
    prompts, completions = _rows(kind)
    fn = reward_function(rm, objective, lam=0.3, k=2.0, beta=0.7)
    logged: dict[str, list[float]] = {}
    out = fn(prompts=prompts, completions=completions, **_trl_kwargs(completions, logged))

    pred = rm.score(prompts, completions, progress=False)
    expected = penalized_reward(pred, objective, lam=0.3, k=2.0, beta=0.7).tolist()
    assert isinstance(out, list) and all(type(v) is float for v in out)
    assert out == expected  # same engine, same order, bit for bit
    # the logged statistics are the batch's, under the function's name
    std = pred.var.double().sqrt().mean().item()
    assert logged[f"rewards/{fn.__name__}/epistemic_std"] == [pytest.approx(std)]
    assert logged[f"rewards/{fn.__name__}/reward_mean"] == [pytest.approx(pred.mean.mean().item())]
    penalty = (pred.mean.double() - torch.tensor(expected, dtype=torch.float64)).mean().item()
    assert logged[f"rewards/{fn.__name__}/penalty"] == [pytest.approx(penalty, abs=1e-6)]
    assert logged[f"rewards/{fn.__name__}/response_truncated_frac"] == [0.0]
    assert std > 0
    assert fn.last_stats["epistemic_std"] == pytest.approx(std)


@pytest.mark.parametrize("kind", ["plain", "conversational"])
def test_rows_keep_their_order(rm, kind):
    prompts, completions = _rows(kind)
    fn = reward_function(rm, "lcb")
    forward = fn(prompts, completions)
    order = [2, 0, 3, 1]
    shuffled = fn([prompts[i] for i in order], [completions[i] for i in order])
    assert len(forward) == len(completions) == len(shuffled)
    assert shuffled == pytest.approx([forward[i] for i in order], abs=1e-5)
    assert len(set(forward)) == len(forward)  # distinct rows, so the order check can fail


def test_closed_form_laplace(laplace_rm):
    fn = reward_function(laplace_rm, "lcb", k=1.5)
    out = fn(PLAIN_PROMPTS, ANSWERS, completion_ids=None)
    pred = laplace_rm.score(PLAIN_PROMPTS, ANSWERS, progress=False)
    assert out == penalized_reward(pred, "lcb", k=1.5).tolist()
    assert out == pytest.approx((pred.mean - 1.5 * pred.var.sqrt()).tolist(), abs=1e-5)


def test_without_log_metric_keeps_last_stats(rm):
    """Online DPO passes no log_metric: the rewards come back and the stats stay on fn."""
    fn = reward_function(rm, "uwo", lam=0.5)
    out = fn(prompts=PLAIN_PROMPTS, completions=ANSWERS, trainer_state=None)
    stats = fn.last_stats
    assert stats["n"] == stats["n_scored"] == 4 and stats["n_empty"] == 0
    assert stats["objective_mean"] == pytest.approx(sum(out) / 4)
    assert math.isfinite(stats["epistemic_std"]) and stats["epistemic_std"] > 0
    assert fn.last_prediction.mean.shape == (4,)


def test_names_for_trl_metrics(rm):
    from trl.trainer.utils import get_callable_name

    assert reward_function(rm, "lcb").__name__ == "auq_lcb_k1.0"
    assert reward_function(rm, "uwo", lam=0.25).__name__ == "auq_uwo_lam0.25"
    assert reward_function(rm, "effective", beta=2).__name__ == "auq_effective_beta2.0"
    assert reward_function(rm).__name__ == "auq_mean"
    fn = reward_function(rm, "wco", name="my_rm")
    assert get_callable_name(fn) == "my_rm"
    # TRL calls an nn.Module as a sequence classifier: the reward function must not be one
    assert not isinstance(fn, torch.nn.Module)


# -- bad input: the messages ----------------------------------------------------------------
def test_bad_objective_lists_the_choices(rm):
    with pytest.raises(ValueError, match="objective='lbc' is not supported") as err:
        reward_function(rm, "lbc")
    for choice in OBJECTIVES:
        assert repr(choice) in str(err.value)


def test_bad_options_fail_at_construction(rm):
    with pytest.raises(ValueError, match="k must be a finite number >= 0"):
        reward_function(rm, "lcb", k=-1)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        reward_function(rm, "effective", beta=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        reward_function(rm, batch_size=0)
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        reward_function(rm, name="  ")
    with pytest.raises(TypeError, match="must have a score"):
        reward_function(object())


def test_length_mismatch(rm):
    fn = reward_function(rm)
    with pytest.raises(ValueError, match="same length .* got 4 and 3"):
        fn(PLAIN_PROMPTS, ANSWERS[:3])
    with pytest.raises(TypeError, match="prompts must be a list with one entry per completion"):
        fn("one prompt", ANSWERS)


# -- calibration --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spread(rm, builtin_small):
    _, held_out = builtin_small
    return SpreadScaler().fit(rm.predict(held_out, calibrated=False, progress=False))


def test_spread_calibrator_is_applied(rm, spread):
    fn = reward_function(rm, "lcb", spread_calibrator=spread)
    out = fn(PLAIN_PROMPTS, ANSWERS)
    pred = rm.score(PLAIN_PROMPTS, ANSWERS, progress=False)
    assert out == pytest.approx(penalized_reward(pred, "lcb", calibrator=spread).tolist())
    plain = reward_function(rm, "lcb")(PLAIN_PROMPTS, ANSWERS)
    assert spread.spread_ != pytest.approx(1.0) and out != pytest.approx(plain)
    assert fn.last_stats["calibrated"] is True
    calibrated_std = (pred.var.sqrt() * spread.spread_).mean().item()
    assert fn.last_stats["epistemic_std"] == pytest.approx(calibrated_std, rel=1e-5)


def test_attached_spread_calibrator_is_used_unless_refused(rm, spread):
    rm.calibrator_ = spread
    try:
        by_default = reward_function(rm, "lcb")(PLAIN_PROMPTS, ANSWERS)
        refused = reward_function(rm, "lcb", calibrated=False)(PLAIN_PROMPTS, ANSWERS)
    finally:
        rm.calibrator_ = None
    assert by_default == reward_function(rm, "lcb", spread_calibrator=spread)(
        PLAIN_PROMPTS, ANSWERS
    )
    assert refused == reward_function(rm, "lcb")(PLAIN_PROMPTS, ANSWERS)
    assert by_default != pytest.approx(refused)


def test_calibration_refusals(rm, spread):
    with pytest.raises(
        ValueError, match="calibrated=True needs a fitted SpreadScaler; .* no calibrator"
    ):
        reward_function(rm, "lcb", calibrated=True)
    with pytest.raises(
        TypeError, match="must be a fitted auq.calibration.SpreadScaler .* got TemperatureScaler"
    ):
        reward_function(rm, "lcb", spread_calibrator=TemperatureScaler())
    with pytest.raises(ValueError, match="calibrated=False contradicts spread_calibrator="):
        reward_function(rm, "lcb", calibrated=False, spread_calibrator=spread)
    with pytest.raises(ValueError, match="calibrated must be None, True or False"):
        reward_function(rm, "lcb", calibrated="yes")
    with pytest.raises(Exception, match="not fitted"):
        reward_function(rm, "lcb", spread_calibrator=SpreadScaler())


# -- what cannot be scored in full: never dropped silently ---------------------------------------
def test_truncation_is_surfaced(tiny_gpt2_dir, builtin_small):
    train, _ = builtin_small
    short = auq.RewardModel.from_backbone(tiny_gpt2_dir, uq="heads", n_members=2, max_length=12)
    with pytest.warns(TruncationWarning):
        short.fit(train, epochs=1, progress=False)
    fn = reward_function(short, "lcb")
    logged: dict[str, list[float]] = {}
    with pytest.warns(TruncationWarning, match="responses truncated"):
        out = fn(PLAIN_PROMPTS, ANSWERS, log_metric=lambda n, v: logged.setdefault(n, []).append(v))
    assert len(out) == 4 and all(math.isfinite(v) for v in out)
    cut = fn.last_stats["n_response_truncated"]
    assert cut > 0 and fn.last_stats["truncation"].n_items == 4
    assert logged["rewards/auq_lcb_k1.0/response_truncated_frac"] == [cut / 4]


def test_empty_conversational_completion(rm):
    completions = [
        *CONV_COMPLETIONS[:2],
        [{"role": "assistant", "content": "  "}],
        CONV_COMPLETIONS[3],
    ]
    logged: dict[str, list[float]] = {}
    fn = reward_function(rm, "lcb")
    out = fn(CONV_PROMPTS, completions, log_metric=lambda n, v: logged.setdefault(n, []).append(v))
    keep = [0, 1, 3]
    alone = reward_function(rm, "lcb")(
        [CONV_PROMPTS[i] for i in keep], [completions[i] for i in keep]
    )
    assert math.isnan(out[2]) and [out[i] for i in keep] == pytest.approx(alone)
    assert fn.last_stats["n_empty"] == 1 and logged["rewards/auq_lcb_k1.0/empty_frac"] == [0.25]
    penalised = reward_function(rm, "lcb", empty_reward=-5.0)(CONV_PROMPTS, completions)
    assert penalised[2] == -5.0
    assert reward_function(rm)(PLAIN_PROMPTS, ["", *ANSWERS[1:]])[0] == pytest.approx(
        rm.score(PROMPTS[0], "", progress=False).mean.item(), abs=1e-5
    )  # plain "" is text the model scores


def test_integrations_package_is_lazy():
    code = (
        "import sys, auq.integrations as m; "
        "assert 'auq.integrations.trl' not in sys.modules and 'auq.integrations.verl' not in sys.modules; "
        "f = m.trl.reward_function; assert 'trl' not in sys.modules, 'auq.integrations.trl imported TRL'; "
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    import auq.integrations

    with pytest.raises(AttributeError, match="has no attribute 'openrlhf'"):
        auq.integrations.openrlhf  # noqa: B018


# -- real TRL trainers ------------------------------------------------------------------------
@pytest.fixture
def policy(tiny_gpt2_dir):
    """A tiny random GPT-2 LM with the backbone's byte-level tokenizer (chat template)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config), tok


def _dataset(kind):
    from datasets import Dataset

    questions = [*PROMPTS, "What is the best plan?", "Is it a stupid question?"]
    prompts = (
        questions if kind == "plain" else [[{"role": "user", "content": q}] for q in questions]
    )
    return Dataset.from_dict({"prompt": prompts, "topic": ["a", "b", "c", "d"]})


_COMMON = {
    "report_to": "none",
    "use_cpu": True,
    "max_steps": 2,
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "disable_tqdm": True,
}


@pytest.mark.parametrize(
    ("trainer", "kind"), [("grpo", "plain"), ("grpo", "conversational"), ("rloo", "plain")]
)
def test_trainer_logs_auq_metrics(rm, policy, tmp_path, trainer, kind):
    model, tok = policy
    fn = reward_function(rm, "lcb", k=1.0)
    # 4 completions per step = 2 prompts × num_generations 2, one reward call per step
    options = {
        **_COMMON,
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 8,
    }
    if trainer == "grpo":
        args = trl.GRPOConfig(**options)
        run = trl.GRPOTrainer(
            model=model,
            reward_funcs=fn,
            args=args,
            train_dataset=_dataset(kind),
            processing_class=tok,
        )
    else:  # beta=0: no reference model (it would be re-loaded from a path the tiny policy lacks)
        args = trl.RLOOConfig(beta=0.0, **options)
        run = trl.RLOOTrainer(
            model=model,
            reward_funcs=fn,
            args=args,
            train_dataset=_dataset(kind),
            processing_class=tok,
        )
    run.train()

    logs = [h for h in run.state.log_history if "loss" in h]
    assert len(logs) == 2
    names = ["mean", "epistemic_std", "reward_mean", "penalty", "response_truncated_frac"]
    for log in logs:
        for metric in names:
            value = log[f"rewards/auq_lcb_k1.0/{metric}"]
            assert math.isfinite(value), (metric, log)
        assert log["rewards/auq_lcb_k1.0/epistemic_std"] > 0
        # lcb with k=1: the penalty is the epistemic std
        assert log["rewards/auq_lcb_k1.0/penalty"] == pytest.approx(
            log["rewards/auq_lcb_k1.0/epistemic_std"], rel=1e-4
        )
    # the trainer logged exactly what the function computed in its last call
    last = fn.last_stats
    assert last["n"] == 4
    assert logs[-1]["rewards/auq_lcb_k1.0/mean"] == pytest.approx(last["objective_mean"], rel=1e-5)
    assert logs[-1]["rewards/auq_lcb_k1.0/epistemic_std"] == pytest.approx(
        last["epistemic_std"], rel=1e-5
    )


def test_online_dpo_trainer(rm, policy, tmp_path):
    """TRL's Online DPO passes no log_metric: its own score log and fn.last_stats carry the numbers."""
    online_dpo = pytest.importorskip("trl.experimental.online_dpo")
    model, tok = policy
    fn = reward_function(rm, "uwo", lam=0.5)
    args = online_dpo.OnlineDPOConfig(
        **_COMMON, output_dir=str(tmp_path), per_device_train_batch_size=2, max_new_tokens=8
    )
    run = online_dpo.OnlineDPOTrainer(
        model=model,
        reward_funcs=fn,
        args=args,
        train_dataset=_dataset("plain"),
        processing_class=tok,
    )
    run.train()
    logs = [h for h in run.state.log_history if "loss" in h]
    assert len(logs) == 2
    assert not any(key.startswith("rewards/auq") for key in logs[-1])
    last = fn.last_stats
    assert last["n"] == 4  # 2 prompts × 2 completions
    assert logs[-1]["objective/scores"] == pytest.approx(last["objective_mean"], rel=1e-5)
    assert math.isfinite(last["epistemic_std"]) and last["epistemic_std"] > 0
