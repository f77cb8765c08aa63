"""``auq train-rm``, ``auq dpo``, ``auq online-dpo``, ``auq best-of-n`` end to end.

Tiny models built here: a 2-layer GPT-2 policy with the testbed's word-level tokenizer,
and an auq reward model (3 heads) on that GPT-2 as its backbone, fitted for one epoch.
Each command runs in-process through ``auq.cli.main``; the resume test kills a real
``auq dpo`` process with SIGKILL after a checkpoint and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import auq
from auq.cli import main

REPO = Path(__file__).resolve().parents[2]
MAX = ["--max-length", "96", "--max-prompt-length", "32"]


def cli(capsys, *argv):
    """Run ``auq argv`` in-process; returns (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own exits (--help, usage errors)
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    prefix = f"auq {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


def parse(*argv):
    from auq.cli.main import build_parser

    return build_parser().parse_args([str(a) for a in argv])


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Pairs (JSONL, Parquet), held-out pairs, prompts (.txt, JSONL) from a testbed world."""
    from auq.testbed import World

    world = World(0)
    path = tmp_path_factory.mktemp("train-data")
    train = world.preference_dataset(16, seed=1)
    held_out = world.preference_dataset(8, seed=2)
    prompts = world.sample_prompts(4, seed=3)
    keep = ("prompt", "chosen", "rejected")
    rows = [{k: r[k] for k in keep} for r in train.to_records()]
    with open(path / "pairs.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    held_out.to_jsonl(path / "eval.jsonl")
    (path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    with open(path / "prompts.jsonl", "w") as fh:
        fh.writelines(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts))
    texts = [*train.prompts, *train.chosen, *train.rejected, *held_out.chosen, *held_out.rejected]
    return {
        "dir": path,
        "pairs": path / "pairs.jsonl",
        "eval": path / "eval.jsonl",
        "prompts_txt": path / "prompts.txt",
        "prompts_jsonl": path / "prompts.jsonl",
        "texts": texts + list(held_out.prompts) + prompts,
        "train": train,
        "held_out": held_out,
        "prompts": prompts,
    }


@pytest.fixture(scope="module")
def policy_dir(files, tmp_path_factory):
    """A tiny random GPT2LMHeadModel and a word-level tokenizer of the testbed's texts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from auq.testbed.tokenizer import build_tokenizer

    path = tmp_path_factory.mktemp("policy")
    tok = build_tokenizer(files["texts"], model_max_length=128)
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
    GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_dir(files, policy_dir, tmp_path_factory):
    """An auq reward model (3 heads on the tiny GPT-2) fitted for one epoch, saved."""
    path = tmp_path_factory.mktemp("rm")
    rm = auq.RewardModel.from_backbone(policy_dir, n_members=3, max_length=96)
    rm.fit(files["train"], epochs=1, progress=False)
    rm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trapped_policy(tmp_path_factory):
    """A POLICY whose config.json is not JSON: loading it would fail with another message,
    so an option error naming the option proves the check came before any model loaded."""
    path = tmp_path_factory.mktemp("trapped-policy")
    (path / "config.json").write_text("this is not a model config")
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


# -- --help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("train-rm", ["--uq", "--n-members", "--save-steps", "--resume", "--eval-data"]),
        ("dpo", ["--beta", "--loss-type", "--uncertainty", "--gradient-checkpointing", "--cpu"]),
        ("online-dpo", ["--num-generations", "--objective", "--alpha", "--reward-model"]),
        ("best-of-n", ["--n", "--objective", "--lam", "--max-new-tokens", "--temperature"]),
    ],
)
def test_help_lists_the_options(capsys, command, flags):
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: auq {command}")
    for flag in [*flags, "--config", "--out", "--no-progress"]:
        assert flag in out, flag


def test_the_commands_are_listed_in_auq_help(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for command in ("train-rm", "dpo", "online-dpo", "best-of-n"):
        assert command in out


# -- the commands end to end ------------------------------------------------------------------


def test_train_rm_saves_a_model_whose_held_out_accuracy_is_the_one_printed(
    capsys, tmp_path, files, policy_dir
):
    out = tmp_path / "rm"
    code, stdout, err = cli(
        capsys,
        "train-rm",
        policy_dir,
        files["pairs"],
        "--out",
        out,
        "--n-members",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "96",
        "--eval-data",
        files["eval"],
        "--save-steps",
        "2",
        "--no-progress",
    )
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("trained a heads reward model (2 members) on 16 pairs; 2 epochs")
    rm = auq.RewardModel.from_pretrained(out)
    assert rm.config.uq == "heads" and rm.config.n_members == 2
    pred = rm.predict(files["held_out"], progress=False)
    accuracy = float((pred.margin_mean > 0).float().mean())
    assert f"held-out accuracy {accuracy:.3f} on 8 pairs" in lines[0]
    # 16 pairs / 8 per update x 2 epochs = 4 updates: checkpoints 2 and 4 under checkpoints/
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-000002", "checkpoint-000004"]


def test_dpo_trains_saves_the_policy_and_train_result(capsys, tmp_path, files, policy_dir, rm_dir):
    out = tmp_path / "dpo"
    code, stdout, err = cli(
        capsys,
        "dpo",
        policy_dir,
        files["pairs"],
        "--out",
        out,
        "--reward-model",
        rm_dir,
        "--uncertainty",
        "weight",
        "--eval-data",
        files["eval"],
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--lr",
        "1e-3",
        "--cpu",
        "--no-progress",
        *MAX,
    )
    assert code == 0, err
    assert stdout.startswith("DPO: 2 updates on 16 of 16 pairs")
    result = json.loads((out / "train_result.json").read_text())
    assert result["n_pairs"] == result["n_trained"] == 16 and result["n_steps"] == 2
    assert result["targets"]["n_pairs"] == 16 and "weight_min" in result["targets"]
    assert result["eval_metrics"]["n_pairs"] == 8
    assert result["final_metrics"]["step"] == 2 and "uncertainty/weight" in result["final_metrics"]
    assert result["config"]["uncertainty"] == "weight" and result["config"]["cpu"] is True
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(out)  # the saved policy loads
    before, after = weights(policy_dir), weights(out)
    assert set(before) <= set(after) | {"lm_head.weight"}
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    assert trained.config.n_layer == 2


def test_online_dpo_trains_on_jsonl_prompts(capsys, tmp_path, files, policy_dir, rm_dir):
    out = tmp_path / "online"
    code, stdout, err = cli(
        capsys,
        "online-dpo",
        policy_dir,
        files["prompts_jsonl"],
        "--reward-model",
        rm_dir,
        "--out",
        out,
        "--max-steps",
        "2",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "6",
        "--objective",
        "lcb",
        "--lr",
        "1e-3",
        "--cpu",
        "--no-progress",
        *MAX,
    )
    assert code == 0, err
    assert stdout.startswith("online DPO: 2 updates")
    result = json.loads((out / "train_result.json").read_text())
    assert result["n_prompts"] == 4 and result["n_steps"] == 2
    # every prompt of the 2 x 2 drawn is trained on or counted as skipped
    assert result["n_pairs"] + result["n_skipped_ties"] + result["n_skipped_uncertain"] == 4
    assert {"kl", "reward/mean", "reward/epistemic_std"} <= set(result["final_metrics"])
    assert result["config"]["objective"] == "lcb"
    assert weights(out).keys() >= {"transformer.wte.weight"}


def test_best_of_n_writes_the_pick_of_each_prompt(capsys, tmp_path, files, policy_dir, rm_dir):
    out = tmp_path / "picks.jsonl"
    code, stdout, err = cli(
        capsys,
        "best-of-n",
        policy_dir,
        files["prompts_txt"],
        "--reward-model",
        rm_dir,
        "--n",
        "3",
        "--out",
        out,
        "--objective",
        "lcb",
        "--k",
        "2",
        "--max-new-tokens",
        "6",
        "--candidates",
        "--cpu",
        "--no-progress",
    )
    assert code == 0, err
    assert stdout.startswith("best-of-3 (lcb) on 4 prompts (12 candidates")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == files["prompts"]
    for row in rows:
        assert row["n_candidates"] == 3 and len(row["candidates"]) == 3
        assert row["reward"] == pytest.approx(row["mean"] - 2 * row["std"], abs=1e-5)
        values = [c["reward"] for c in row["candidates"]]
        assert row["index"] == int(np.argmax(values))
        assert row["response"] == row["candidates"][row["index"]]["response"]


# -- --config ---------------------------------------------------------------------------------


def _write_config(path: Path, options: dict, fmt: str) -> Path:
    import yaml

    target = path.with_suffix(f".{fmt}")
    if fmt == "json":
        target.write_text(json.dumps(options))
    else:  # YAML, keys with dashes
        target.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in options.items()}))
    return target


DPO_FLAGS = {
    "out": "OUT",
    "beta": 0.25,
    "loss_type": "ipo",
    "max_steps": 7,
    "save_steps": 3,
    "lr": 0.002,
    "gradient_checkpointing": True,
    "cpu": True,
    "no_progress": True,
    "disable_dropout": False,
    "lora_r": 4,
}
ONLINE_FLAGS = {
    "out": "OUT",
    "reward_model": "RM",
    "objective": "uwo",
    "lam": 0.75,
    "alpha": 0.2,
    "num_generations": 3,
    "top_k": 5,
    "resume": True,
}
BEST_OF_N_FLAGS = {"out": "OUT", "reward_model": "RM", "n": 5, "objective": "wco", "seed": 3}
TRAIN_RM_FLAGS = {"out": "OUT", "uq": "heads", "n_members": 4, "epochs": 3, "save_steps": 2}


def _argv(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def _resolved(command: str, argv: list) -> object:
    """What a command makes of its options, before anything loads."""
    from auq.cli import best_of_n, dpo, online_dpo, train_rm
    from auq.cli.config_file import resolve_options

    if command == "dpo":
        args = parse("dpo", "POLICY", "DATA", *argv)
        config, values = dpo.dpo_config(args)
        return config, values
    if command == "online-dpo":
        args = parse("online-dpo", "POLICY", "PROMPTS", *argv)
        return online_dpo.online_dpo_config(args)
    if command == "best-of-n":
        args = parse("best-of-n", "POLICY", "PROMPTS", *argv)
        return best_of_n._check(resolve_options(args, best_of_n.options()))
    args = parse("train-rm", "BACKBONE", "DATA", *argv)
    values = resolve_options(args, train_rm.options())
    return values, train_rm.fit_options(values, Path(values["out"]))


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("dpo", DPO_FLAGS),
        ("online-dpo", ONLINE_FLAGS),
        ("best-of-n", BEST_OF_N_FLAGS),
        ("train-rm", TRAIN_RM_FLAGS),
    ],
)
def test_a_config_file_equals_the_same_flags(tmp_path, command, options, fmt):
    options = {
        k: str(tmp_path / v) if k in ("out", "reward_model") else v for k, v in options.items()
    }
    from_flags = _resolved(command, _argv(options))
    config = _write_config(tmp_path / "options", options, fmt)
    from_file = _resolved(command, ["--config", config])
    assert from_file == from_flags
    if command == "dpo":
        dpo_config = from_file[0]
        assert (dpo_config.beta, dpo_config.loss_type, dpo_config.max_steps) == (0.25, "ipo", 7)
        assert dpo_config.gradient_checkpointing and dpo_config.cpu
        assert dpo_config.progress is False and dpo_config.disable_dropout is False
        assert dpo_config.output_dir == options["out"] and from_file[1]["lora_r"] == 4


def test_flags_override_the_config_file_and_absent_options_keep_defaults(tmp_path):
    from auq.training.dpo_config import DPOConfig

    config = _write_config(tmp_path / "c", {"beta": 0.5, "max_steps": 3}, "yaml")
    dpo_config, _ = _resolved("dpo", ["--config", config, "--beta", "0.2", "--out", tmp_path])
    assert dpo_config.beta == 0.2 and dpo_config.max_steps == 3
    default = DPOConfig()
    assert dpo_config.lr == default.lr and dpo_config.loss_type == default.loss_type
    assert dpo_config.save_steps is None and dpo_config.weight_scale is None


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\nmax-steps: 4\nweight_scale: 2\n")  # YAML 1.1: "1e-3" is text
    dpo_config, _ = _resolved("dpo", ["--config", config, "--out", tmp_path])
    assert (dpo_config.lr, dpo_config.max_steps, dpo_config.weight_scale) == (1e-3, 4, 2.0)


@pytest.mark.parametrize("command", ["dpo", "online-dpo"])
def test_every_config_field_is_a_flag(command):
    from dataclasses import fields

    from auq.cli import dpo, online_dpo
    from auq.training.dpo_config import DPOConfig, OnlineDPOConfig

    module, cls = (dpo, DPOConfig) if command == "dpo" else (online_dpo, OnlineDPOConfig)
    names = {o.name for o in module.options()}
    assert {f.name for f in fields(cls)} - set(dpo.RENAMED) <= names
    assert {"out", "resume", "no_progress"} <= names


def test_train_rm_passes_zero_valued_options():
    _, training = _resolved("train-rm", ["--out", "OUT", "--weight-decay", "0", "--epochs", "2"])
    assert training == {"weight_decay": 0.0, "epochs": 2}


def test_best_of_n_from_a_config_file_writes_what_the_flags_write(
    capsys, tmp_path, files, policy_dir, rm_dir
):
    options = {"reward_model": str(rm_dir), "n": 2, "objective": "uwo", "lam": 1.5}
    options |= {"max_new_tokens": 5, "seed": 7, "cpu": True, "no_progress": True}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    code, _, err = cli(
        capsys, "best-of-n", policy_dir, files["prompts_txt"], "--out", a, *_argv(options)
    )
    assert code == 0, err
    config = _write_config(tmp_path / "bon", options, "yaml")
    code, _, err = cli(
        capsys, "best-of-n", policy_dir, files["prompts_txt"], "--out", b, "--config", config
    )
    assert code == 0, err
    assert a.read_text() == b.read_text()


# -- bad configuration: one line, exit 2, before any model loads -------------------------------


def _bad_cases(files: dict, tmp: Path, rm: Path):
    pairs, prompts, out = files["pairs"], files["prompts_txt"], tmp / "out"
    no_rejected = tmp / "no_rejected.jsonl"
    no_rejected.write_text(json.dumps({"prompt": "a", "chosen": "b", "answer": "c"}) + "\n")
    no_prompt = tmp / "no_prompt.jsonl"
    no_prompt.write_text(json.dumps({"text": "a"}) + "\n")
    a_file = tmp / "a_file"
    a_file.write_text("x")
    unknown = tmp / "unknown.yaml"
    unknown.write_text("beta: 0.1\nbogus_option: 3\n")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("beta: [0.1\n")
    bad_json = tmp / "bad.json"
    bad_json.write_text('{"beta": 0.1,')
    not_a_mapping = tmp / "list.yaml"
    not_a_mapping.write_text("- beta\n- 0.1\n")
    wrong_kind = tmp / "kind.json"
    wrong_kind.write_text(json.dumps({"cpu": "yes"}))
    dpo = ["dpo", "POLICY", pairs, "--out", out]
    online = ["online-dpo", "POLICY", prompts, "--reward-model", rm, "--out", out]
    bon = ["best-of-n", "POLICY", prompts, "--reward-model", rm, "--out", tmp / "o.jsonl"]
    rm_args = ["train-rm", "POLICY", pairs, "--out", out]
    return [
        ([*dpo, "--beta", "0"], "beta must be a finite number > 0, got 0.0"),
        ([*dpo, "--beta", "-1"], "beta must be a finite number > 0, got -1.0"),
        ([*online, "--num-generations", "1"], "num_generations must be an integer >= 2, got 1"),
        (
            [*online, "--objective", "best"],
            "objective='best' is not supported; valid choices: 'mean', 'wco', 'uwo', 'lcb', "
            "'effective'",
        ),
        (
            [*bon, "--n", "2", "--objective", "best"],
            "objective='best' is not supported; valid choices: 'mean', 'wco', 'uwo', 'lcb', "
            "'effective'",
        ),
        ([*bon, "--n", "0"], "n must be an integer >= 1, got 0"),
        (
            [*dpo, "--loss-type", "hinge"],
            "loss_type='hinge' is not supported; valid choices: 'sigmoid', 'ipo'",
        ),
        (
            [*dpo, "--uncertainty", "maybe"],
            "uncertainty='maybe' is not supported; valid choices: 'none', 'soft_label', "
            "'weight', 'pessimistic'",
        ),
        (
            [*dpo, "--uncertainty", "soft_label"],
            "--uncertainty soft_label needs --reward-model RM_DIR (a saved auq reward model); "
            "without one the valid --uncertainty is none",
        ),
        (
            ["dpo", "POLICY", no_rejected, "--out", out],
            f"DATA {str(no_rejected)!r} lacks TRL's column(s) 'rejected'; preference pairs "
            "need prompt, chosen, rejected (optional margin); columns present: 'prompt', "
            "'chosen', 'answer'",
        ),
        (
            [*dpo, "--eval-data", no_rejected],
            f"--eval-data {str(no_rejected)!r} lacks TRL's column(s) 'rejected'",
        ),
        (
            ["online-dpo", "POLICY", no_prompt, "--reward-model", rm, "--out", out],
            f"PROMPTS {str(no_prompt)!r} has no 'prompt' column (columns present: 'text')",
        ),
        (
            ["dpo", "POLICY", pairs, "--out", a_file / "sub"],
            f"--out {str(a_file / 'sub')!r} cannot be created: {str(a_file)!r} is a file",
        ),
        (
            ["dpo", "POLICY", pairs],
            "--out is required (give it on the command line or in --config)",
        ),
        (
            [*dpo, "--config", unknown],
            f"--config {unknown}: unknown option 'bogus_option'; valid: ",
        ),
        ([*dpo, "--config", bad_yaml], f"--config {bad_yaml}: not valid YAML"),
        ([*dpo, "--config", bad_json], f"--config {bad_json}: not valid JSON"),
        ([*dpo, "--config", not_a_mapping], f"--config {not_a_mapping}: must hold a mapping"),
        ([*dpo, "--config", tmp / "missing.yaml"], "file not found"),
        ([*dpo, "--config", wrong_kind], f"--config {wrong_kind}: cpu must be true or false"),
        (
            [*rm_args, "--uq", "magic"],
            "uq='magic' is not supported; valid choices: 'heads', 'lora', 'partial', 'deep', "
            "'mc_dropout', 'laplace', 'pyro'",
        ),
        (
            [*rm_args, "--uq", "laplace", "--epochs", "3"],
            "--epochs: not used by --uq laplace (the posterior is computed in closed form, not "
            "by gradient training); options it uses: none",
        ),
    ]


def test_every_bad_configuration_is_one_line_before_any_model_loads(
    capsys, tmp_path, files, rm_dir, trapped_policy
):
    for argv, message in _bad_cases(files, tmp_path, rm_dir):
        argv = [trapped_policy if a == "POLICY" else a for a in argv]
        code, out, err = cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in one_error_line(err, argv[0]), argv
        assert out == ""
        assert not (tmp_path / "out").exists()  # nothing written


def test_the_unknown_key_message_lists_the_valid_keys(capsys, tmp_path, files, trapped_policy):
    config = _write_config(tmp_path / "c", {"bets": 0.1}, "json")
    code, _, err = cli(
        capsys, "dpo", trapped_policy, files["pairs"], "--out", tmp_path / "o", "--config", config
    )
    assert code == 2
    valid = one_error_line(err, "dpo").split("valid: ")[1].split(", ")
    assert {"beta", "loss_type", "out", "resume", "max_steps", "uncertainty"} <= set(valid)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs a /proc file system")
def test_an_unwritable_out_is_refused(capsys, files, trapped_policy):
    code, _, err = cli(capsys, "dpo", trapped_policy, files["pairs"], "--out", "/proc/auq-run")
    assert code == 2
    assert one_error_line(err, "dpo").startswith("--out '/proc/auq-run' is not writable")


# -- a killed run resumes to the uninterrupted weights -----------------------------------------


def test_a_killed_dpo_run_resumes_to_the_uninterrupted_weights(capsys, tmp_path, files, policy_dir):
    steps = 8
    run = [
        "dpo",
        policy_dir,
        files["pairs"],
        "--batch-size",
        "4",
        "--max-steps",
        str(steps),
        "--save-steps",
        "2",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--cpu",
        "--no-progress",
        *MAX,
    ]
    killed = tmp_path / "killed"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # the same kernels as in-process
    }
    command = [sys.executable, "-m", "auq.cli", *map(str, run), "--out", str(killed)]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    marks = [killed / "checkpoint-000002", killed / "checkpoint-000004"]
    try:
        deadline = time.monotonic() + 240
        while not any(m.is_dir() for m in marks):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not finished, f"the run ended before it could be killed; lengthen it\n{stderr!r}"
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()

    code, stdout, err = cli(capsys, *run, "--out", killed, "--resume")
    assert code == 0, err
    result = json.loads((killed / "train_result.json").read_text())
    assert Path(result["resumed_from"]).name in ("checkpoint-000002", "checkpoint-000004")
    assert "resumed from checkpoint-00000" in stdout
    logged = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # each update once, resumed or not

    whole = tmp_path / "whole"
    code, _, err = cli(capsys, *run, "--out", whole)
    assert code == 0, err
    resumed, uninterrupted = weights(killed), weights(whole)
    assert resumed.keys() == uninterrupted.keys()
    initial = weights(policy_dir)
    changed = 0
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)
        changed += not torch.equal(tensor, initial.get(name, tensor))
    assert changed > 0  # the runs trained
