"""The ``auq`` console command: options, one-line errors, inputs checked before the model loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings

import pytest
import torch

import auq
from auq.cli import main
from auq.cli.errors import CliError, report_failures
from auq.cli.inputs import OutputDir, load_preference_data, parse_builtin
from auq.cli.main import build_parser

ROWS = [
    {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(8)
]


def cli(capsys, *argv):
    """Run ``auq argv`` in-process; returns (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err, command="calibrate"):
    """The single stderr line's message (after ``auq <command>: error: ``)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefix = f"auq {command}: error: " if command else "auq: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in err
    return lines[0][len(prefix) :]


@pytest.fixture(scope="module")
def model_dir(tiny_bert_dir, tmp_path_factory):
    from auq.data.builtin import load_builtin_preferences

    rm = auq.RewardModel.from_backbone(tiny_bert_dir, n_members=2, max_length=96)
    rm.fit(load_builtin_preferences(40, seed=5), epochs=2, progress=False)
    path = tmp_path_factory.mktemp("cli-rm")
    rm.save_pretrained(path)
    return path


@pytest.fixture
def damaged_model_dir(model_dir, tmp_path):
    """A copy of ``model_dir`` whose head weights are truncated: loading it fails."""
    path = tmp_path / "damaged"
    shutil.copytree(model_dir, path)
    weights = path / "head" / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:16])
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- help and usage ------------------------------------------------------------------------


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "auq.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: auq" in out.stdout and "demo" in out.stdout and "--debug" in out.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_demo_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out", "--overwrite", "--fast", "--seed", "--backbone", "--no-progress",
                   "--label-noise", "--selectors", "--n-train", "--pool-size", "--members"):  # fmt: skip
        assert option in out
    for gone in ("--epochs", "--save", "--n-ood", "--hidden-size"):
        assert gone not in out


def test_unknown_command_is_one_line(capsys):
    code, _, err = cli(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice: 'frobnicate'" in one_error_line(err, command=None)


def test_missing_required_option_is_one_line(capsys, model_dir):
    code, _, err = cli(capsys, "calibrate", model_dir, "builtin:10")
    assert code == 2
    assert one_error_line(err) == (
        "the following arguments are required: --out (see 'auq calibrate --help')"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--members", "1"], "argument --members: must be an integer >= 2, got '1'"),
        (["demo", "--pool-size", "x"], "argument --pool-size: must be an integer >= 1, got 'x'"),
        (
            ["demo", "--label-noise", "0.25", "0.5"],
            "argument --label-noise: must be a number in [0, 0.5), got '0.5'",
        ),
        (
            ["demo", "--selectors", "mean", "magic"],
            "argument --selectors: invalid choice: 'magic' (choose from",
        ),
        (
            ["calibrate", "m", "d", "--out", "o", "--calibration-fraction", "1.5"],
            "argument --calibration-fraction: must be a number in (0, 1), got '1.5'",
        ),
        (
            ["calibrate", "m", "d", "--out", "o", "--method", "magic"],
            "argument --method: invalid choice: 'magic' (choose from",
        ),
    ],
)
def test_bad_option_values_are_one_line(capsys, argv, message):
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert one_error_line(err, command=argv[0]).startswith(message)


@pytest.mark.parametrize("gone", ["--epochs", "--save", "--n-ood", "--hidden-size"])
def test_demo_options_of_the_old_demo_are_refused(capsys, gone):
    code, _, err = cli(capsys, "demo", gone, "3")
    assert code == 2
    assert (
        one_error_line(err, command=None) == f"unrecognized arguments: {gone} 3 (see 'auq --help')"
    )


# -- calibrate: inputs checked before the model loads; no output left behind ----------------


def test_missing_model_dir(capsys, tmp_path):
    code, _, err = cli(
        capsys, "calibrate", tmp_path / "nope", "builtin:10", "--out", tmp_path / "o"
    )
    assert code == 2
    assert one_error_line(err) == f"MODEL_DIR '{tmp_path / 'nope'}' does not exist"
    assert not (tmp_path / "o").exists()


def test_model_dir_without_config(capsys, tmp_path):
    code, _, err = cli(capsys, "calibrate", tmp_path, "builtin:10", "--out", tmp_path / "o")
    assert code == 2
    assert one_error_line(err).startswith(f"MODEL_DIR '{tmp_path}' has no auq_config.json")


def test_model_dir_is_a_file(capsys, tmp_path):
    (tmp_path / "model.bin").write_text("x")
    code, _, err = cli(
        capsys, "calibrate", tmp_path / "model.bin", "builtin:10", "--out", tmp_path / "o"
    )
    assert code == 2
    assert one_error_line(err) == (
        f"MODEL_DIR '{tmp_path / 'model.bin'}' is not a directory (expected one from save_pretrained)"
    )


def test_model_dir_with_malformed_config(capsys, model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "auq_config.json").write_text('{"backbone": ')
    code, _, err = cli(capsys, "calibrate", broken, "builtin:10", "--out", tmp_path / "o")
    assert code == 2
    assert "auq_config.json: reward-model config is not valid JSON" in one_error_line(err)


def test_damaged_weights_fail_in_one_line_and_leave_no_output(capsys, damaged_model_dir, tmp_path):
    out = tmp_path / "new" / "report"
    code, _, err = cli(capsys, "calibrate", damaged_model_dir, "builtin:20", "--out", out)
    assert code == 2
    message = one_error_line(err)
    assert message.startswith(f"cannot load the reward model in '{damaged_model_dir}'")
    assert "head.safetensors" in message
    assert not (tmp_path / "new").exists()  # --out is created only once the work succeeds


def test_debug_shows_the_traceback(capsys, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="MODEL_DIR .* does not exist"):
        main(["--debug", "calibrate", str(missing), "builtin:10", "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError):  # also after the command
        main(["calibrate", str(missing), "builtin:10", "--out", str(tmp_path / "o"), "--debug"])


def test_debug_keeps_the_cause_of_a_load_failure(damaged_model_dir, tmp_path):
    with pytest.raises(CliError, match="cannot load the reward model") as info:
        main(["--debug", "calibrate", str(damaged_model_dir), "builtin:20", "--out", str(tmp_path)])
    assert type(info.value.__cause__).__name__ == "CheckpointError"


def test_missing_data_file_is_checked_before_the_model_loads(capsys, damaged_model_dir, tmp_path):
    code, _, err = cli(
        capsys, "calibrate", damaged_model_dir, "nope.jsonl", "--out", tmp_path / "o"
    )
    assert code == 2
    assert one_error_line(err) == (
        "DATA: data file 'nope.jsonl' not found; give a JSONL file with prompt/chosen/rejected "
        "columns, or builtin, builtin:N, builtin-ood or builtin-ood:N"
    )


def test_malformed_data_row_names_file_line_and_field(capsys, damaged_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [ROWS[0], ROWS[1] | {"chosen": " "}])
    code, _, err = cli(capsys, "calibrate", damaged_model_dir, data, "--out", tmp_path / "o")
    assert code == 2
    assert one_error_line(err) == (
        f"row 1 ({data}, line 2), field 'chosen': empty text (whitespace only)"
    )
    assert not (tmp_path / "o").exists()


def test_non_utf8_data_file(capsys, damaged_model_dir, tmp_path):
    data = tmp_path / "latin.jsonl"
    data.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    code, _, err = cli(capsys, "calibrate", damaged_model_dir, data, "--out", tmp_path / "o")
    assert code == 2
    assert one_error_line(err).startswith(
        f"{data}, line 1: not valid UTF-8 (byte 0xe9 at byte offset 15 of the file)"
    )


def test_too_few_pairs_to_split(capsys, damaged_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", ROWS[:1])
    code, _, err = cli(capsys, "calibrate", damaged_model_dir, data, "--out", tmp_path / "o")
    assert code == 2
    assert one_error_line(err).startswith(
        "DATA has 1 pairs, too few to split with --calibration-fraction 0.5"
    )


def test_out_is_an_existing_file(capsys, damaged_model_dir, tmp_path):
    (tmp_path / "taken").write_text("x")
    code, _, err = cli(
        capsys, "calibrate", damaged_model_dir, "builtin:10", "--out", tmp_path / "taken"
    )
    assert code == 2
    assert one_error_line(err) == f"--out '{tmp_path / 'taken'}' exists and is not a directory"


def test_out_under_a_file_cannot_be_created(capsys, damaged_model_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "report"
    code, _, err = cli(capsys, "calibrate", damaged_model_dir, "builtin:10", "--out", out)
    assert code == 2
    assert (
        one_error_line(err) == f"--out '{out}' cannot be created: '{tmp_path / 'file'}' is a file"
    )


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_read_only_directory(capsys, damaged_model_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = cli(capsys, "calibrate", damaged_model_dir, "builtin:10", "--out", locked / "o")
    assert code == 2
    assert one_error_line(err) == f"--out '{locked / 'o'}' is not writable (in '{locked}')"


def test_output_dir_removes_what_a_failed_write_created(tmp_path):
    fresh = OutputDir(str(tmp_path / "a" / "b"))
    with pytest.raises(RuntimeError, match="disk full"), fresh.writing() as out:
        (out / "report.json").write_text("{}")
        raise RuntimeError("disk full")
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), OutputDir(str(existing)).writing() as out:
        (out / "new.json").write_text("{}")
        raise RuntimeError("plot failed")
    assert sorted(p.name for p in existing.iterdir()) == ["old.txt"]


def test_calibrate_runs_and_writes_strict_json(capsys, model_dir, tmp_path):
    out = tmp_path / "deep" / "report"
    code, stdout, err = cli(capsys, "calibrate", model_dir, "builtin:40", "--out", out)
    assert code == 0, err
    assert "evaluated on 20 pairs (metrics on the pairs and their swaps)" in stdout
    text = (out / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert report["before"]["symmetrized"] is True and report["after"]["symmetrized"] is True
    assert report["before"]["n"] == report["n_evaluation"] == 20
    assert all(line.startswith("auq calibrate: warning: ") for line in err.splitlines())


# -- data sources: the built-in set or a file -----------------------------------------------


def test_builtin_sources():
    assert parse_builtin("builtin") == ("in", 2000)
    assert parse_builtin("builtin:30") == ("in", 30)
    assert parse_builtin("builtin-ood") == ("ood", 2000)
    assert parse_builtin("builtin-ood:7") == ("ood", 7)
    ood = load_preference_data("builtin-ood:7")
    assert len(ood) == 7 and set(ood.column("topic")) <= set(auq.data.builtin.OOD_TOPICS)


@pytest.mark.parametrize("size", ["0", "-3", "1.5", "x", ""])
def test_builtin_size_must_be_a_positive_integer(size):
    with pytest.raises(CliError, match=rf"builtin-ood:N needs a positive integer N .*got '{size}'"):
        load_preference_data(f"builtin-ood:{size}")


def test_files_named_like_the_builtin_set_are_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("builtin", "builtin:5", "builtin-ood"):
        write_jsonl(tmp_path / name, ROWS[:3])
        assert parse_builtin(name) is None
        assert load_preference_data(name).to_records() == ROWS[:3]
    for name in ("builtin.jsonl", "data/builtin:5", "./builtin-ood:4", "builtin-x:3"):
        with pytest.raises(FileNotFoundError, match=rf"DATA: data file '{name}' not found"):
            load_preference_data(name)


def test_data_directory_is_refused(tmp_path):
    with pytest.raises(CliError, match=r"DATA '.*' is a directory; give a JSONL file of pairs"):
        load_preference_data(str(tmp_path))


# -- how failures are reported -------------------------------------------------------------


def test_subprocess_user_error_is_one_line_with_status_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "auq.cli", "calibrate", str(tmp_path / "nope"), "builtin:10",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr == f"auq calibrate: error: MODEL_DIR '{tmp_path / 'nope'}' does not exist\n"
    assert run.stdout == ""


def test_unexpected_errors_are_one_line_with_status_1(capsys):
    def broken() -> int:
        return 1 // 0

    assert report_failures("auq demo", broken) == 1
    line = one_error_line(capsys.readouterr().err, command="demo")
    assert line == (
        "unexpected ZeroDivisionError: integer division or modulo by zero (run "
        "'auq --debug demo ...' for the traceback, and please report it)"
    )
    with pytest.raises(ZeroDivisionError):
        report_failures("auq demo", broken, debug=True)


def test_warnings_become_one_line(capsys):
    def warns() -> int:
        warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)
        return 0

    assert report_failures("auq demo", warns) == 0
    assert capsys.readouterr().err == "auq demo: warning: first line second line\n"


def test_keyboard_interrupt_exits_130_in_one_line(tiny_bert_dir, tmp_path):
    argv = [sys.executable, "-m", "auq.cli", "demo", "--backbone", str(tiny_bert_dir),
            "--out", str(tmp_path / "report"), "--policy-steps", "5000", "--no-progress"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", AUQ_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().startswith("backbone: ")  # main() is running
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == "auq demo: interrupted\n"
    assert not (tmp_path / "report").exists()


# -- demo ----------------------------------------------------------------------------------

#: options of a demo run that takes seconds on the tiny backbone
TINY_DEMO = ["--n-train", "40", "--n-calibration", "20", "--n-test", "20", "--n-prompts", "3",
             "--pool-size", "8", "--members", "2", "--policy-steps", "10", "--policy-pairs",
             "100", "--max-new-tokens", "16", "--no-progress"]  # fmt: skip


def test_demo_config_from_options():
    from auq.cli.demo import FAST, FULL, study_config
    from auq.cli.main import demo_config

    parser = build_parser()
    config = demo_config(parser.parse_args(["demo"]))
    assert config.progress is None and config.out == "auq-demo-report"  # bars only on a terminal
    assert demo_config(parser.parse_args(["demo", "--no-progress"])).progress is False
    full = study_config(config)
    assert full.seeds == (0,) and full.label_noises == FULL.label_noises
    assert full.pool_size == FULL.pool_size and full.backbone is None  # the packaged MiniLM
    assert {"single", "mean", "laplace"} <= set(full.selectors)
    assert {"uwo_0.5", "lcb"} & set(full.selectors)  # a conservative objective
    fast = study_config(demo_config(parser.parse_args(["demo", "--fast", "--seed", "3"])))
    assert fast.seeds == (3,) and fast.pool_size == FAST.pool_size < FULL.pool_size
    assert fast.resolved_policy_config.steps == FAST.policy_steps
    mixed = demo_config(parser.parse_args(["demo", "--fast", "--pool-size", "32",
                                           "--label-noise", "0.1", "--selectors", "single", "wco"]))  # fmt: skip
    study = study_config(mixed)  # an explicit size wins over the preset
    assert study.pool_size == 32 and study.n_train == FAST.n_train
    assert study.label_noises == (0.1,) and study.selectors == ("single", "wco")


def test_demo_out_under_a_file_is_checked_before_compute(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, out, err = cli(capsys, "demo", "--out", tmp_path / "file" / "r")
    assert code == 2 and out == ""  # nothing ran
    assert one_error_line(err, command="demo") == (
        f"--out '{tmp_path / 'file' / 'r'}' cannot be created: '{tmp_path / 'file'}' is a file"
    )


def test_demo_refuses_a_non_empty_out_without_overwrite(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, out, err = cli(capsys, "demo", "--out", tmp_path)
    assert code == 2 and out == ""
    assert one_error_line(err, command="demo") == (
        f"--out '{tmp_path}' exists and is not empty; pass --overwrite to write the report "
        "into it (its report files are replaced), or choose another --out"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_demo_unloadable_backbone(capsys, tmp_path):
    argv = ["demo", "--backbone", tmp_path / "no-such-model", "--out", tmp_path / "r", *TINY_DEMO]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""  # checked before compute
    assert one_error_line(err, command="demo").startswith(
        f"cannot load the backbone '{tmp_path / 'no-such-model'}': "
    )
    assert not (tmp_path / "r").exists()


def test_demo_writes_the_report_on_a_tiny_backbone(capsys, tiny_bert_dir, tmp_path, monkeypatch):
    from auq.training.study_result import StudyResult

    monkeypatch.setenv("AUQ_CACHE_DIR", str(tmp_path / "cache"))  # the policy is cached here
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    argv = ["demo", "--backbone", tiny_bert_dir, "--out", report, "--overwrite",
            "--label-noise", "0.25", "0", *TINY_DEMO]  # fmt: skip
    threads = torch.get_num_threads()
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    assert torch.get_num_threads() == threads  # --threads 1 (the default) is undone
    assert f"report: {report.resolve() / 'index.html'}" in out
    assert "reference policy" in out and "writing the report" in out  # stages
    assert "Coste et al.'s ordering" in out and out.count("laplace") >= 2  # the summary
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page and "http" not in page  # static and self-contained
    figures = ["overoptimization.png", "pick_std.png", "reliability_noise_0.25.png",
               "reliability_noise_0.png"]  # fmt: skip
    for name in figures:
        assert f'<img src="{name}"' in page
        assert (report / name).read_bytes().startswith(b"\x89PNG")
    assert "<th>gold at n max</th>" in page and "<th>Gao R²</th>" in page
    assert "<th>cost of the proxy</th>" in page and "ECE before" in page
    assert "realised noise rate" in page and "ordering" in page
    assert "trained by this run in " in page and str(tmp_path / "cache") in page
    assert page.count("<tr><td>uwo_0.5</td>") == 2  # one row per label noise
    result = StudyResult.from_json(report / "study.json")
    assert result.config.label_noises == (0.25, 0.0) and result.config.pool_size == 8
    assert (report / "notes.txt").read_text() == "mine"  # --overwrite leaves other files


def test_report_page_escapes_every_text():
    from auq.cli import htmlpage

    page = htmlpage.page(
        "a <b> & 'c'",
        [htmlpage.table(["<th>"], [["<script>alert(1)</script>"]]),
         htmlpage.figure('x".png', "<alt>", "1 < 2"), htmlpage.definition_list([("&", "<")])],
    )  # fmt: skip
    assert "<script>" not in page and "<b>" not in page
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        and "a &lt;b&gt; &amp; &#x27;c&#x27;" in page
    )
    assert '<img src="x&quot;.png" alt="&lt;alt&gt;">' in page


def _study(golds):
    """A StudyResult holding hand-written curves: selector -> gold at n = 1, 2."""
    from auq.training.study_config import StudyConfig
    from auq.training.study_result import CURVE_FIELDS, StudyResult

    config = StudyConfig(label_noises=(0.25,), pool_size=2, selectors=tuple(golds))
    rows = [
        {f: 0.0 for f in CURVE_FIELDS}
        | {"seed": 0, "label_noise": 0.25, "selector": name, "n": n, "gold": gold[i]}
        for name, gold in golds.items()
        for i, n in enumerate((1, 2))
    ]
    return StudyResult(config=config, curves=rows)


def test_report_states_the_coste_verdict_either_way():
    from auq.cli.report import coste_verdict

    holds = _study({"single": (0, 0.1), "mean": (0, 0.2), "uwo_0.5": (0, 0.3)})
    assert coste_verdict(holds, 0.25) == (
        "At 25 % label noise and n = 2, Coste et al.'s ordering HOLDS: best conservative "
        "uwo_0.5 0.300, mean 0.200, single 0.100 (gold reward)."
    )
    broken = _study({"single": (0, 0.3), "mean": (0, 0.2), "lcb": (0, 0.1)})
    assert coste_verdict(broken, 0.25) == (
        "At 25 % label noise and n = 2, Coste et al.'s ordering does NOT hold: the best "
        "conservative objective is below the ensemble mean and the ensemble mean does not "
        "beat the single model (best conservative lcb 0.100, mean 0.200, single 0.300, gold "
        "reward)."
    )
    missing = _study({"single": (0, 0.3), "mean": (0, 0.2)})
    assert coste_verdict(missing, 0.25).startswith(
        "At 25 % label noise and n = 2, the ordering cannot be judged: needs a conservative"
    )
