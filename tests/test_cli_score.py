"""``auq score``: a data set streamed through a saved reward model, resumable, one process or many.

Real tiny models throughout (a 2-layer GPT-2 with K = 3 heads, fitted once per module);
the interrupted runs are real subprocesses killed with SIGKILL / SIGINT, and the
many-process run is a real ``torchrun`` with two CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import auq
from auq.cli import main
from auq.objectives import penalized_reward

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_gpt2_dir, builtin_small, tmp_path_factory):
    train, _ = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=3, max_length=64)
    rm.fit(train.select(range(24)), epochs=1, progress=False)
    path = tmp_path_factory.mktemp("score-rm")
    rm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def damaged_model_dir(model_dir, tmp_path_factory):
    """A copy whose head weights are truncated: an error about it means the model loaded."""
    path = tmp_path_factory.mktemp("damaged") / "rm"
    shutil.copytree(model_dir, path)
    weights = path / "head" / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:16])
    return path


def make_rows(builtin_small, n: int) -> list[dict]:
    """``n`` distinct rows (prompts shared by several responses, as in best-of-n)."""
    _, test = builtin_small
    out = []
    for i in range(n):
        j = (i // 3) % len(test)
        response = test.chosen[j] if i % 2 else test.rejected[j]
        out.append({"id": f"q{i}", "prompt": test.prompts[j], "response": f"{response} ({i})"})
    return out


@pytest.fixture(scope="module")
def rows(builtin_small):
    return make_rows(builtin_small, 40)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return auq.RewardModel.from_pretrained(model_dir)


def in_memory(rm, rows):
    """``rm.score`` of every row at once: what each output must equal."""
    return rm.score([r["prompt"] for r in rows], [r["response"] for r in rows], progress=False)


@pytest.fixture(scope="module")
def expected(loaded, rows):
    return in_memory(loaded, rows)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def cli(capsys, *argv):
    """Run ``auq score argv`` in-process; (exit status, stdout, stderr)."""
    try:
        code = main(["score", *(str(a) for a in argv)])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("auq score: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0][len("auq score: error: ") :]


def assert_output(out: list[dict], rows: list[dict], expected, *, ids=None) -> None:
    """Every input row exactly once, in order, with the in-memory values."""
    assert [o["row"] for o in out] == list(range(len(rows)))
    want_ids = [r["id"] for r in rows] if ids is None else ids
    assert [o["id"] for o in out] == want_ids
    for name in ("mean", "std"):
        got = torch.tensor([o[name] for o in out])
        torch.testing.assert_close(got, getattr(expected, name), rtol=0, atol=1e-5)


def start_scoring(args: list) -> subprocess.Popen:
    argv = [sys.executable, "-m", "auq.cli", "score", *map(str, args), "--no-progress"]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO
    )


def wait_for_rows(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    """Return once ``out`` holds a complete line while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while not (out.is_file() and b"\n" in out.read_bytes()):
        if proc.poll() is not None:
            pytest.fail(f"auq score ended before writing a row: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "no row written"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"


# -- many processes ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", ["6", "40"], ids=["chunks-for-both", "one-rank-idle"])
def test_two_processes_under_torchrun_equal_one(capsys, model_dir, rows, tmp_path, chunk_size):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    options = ["--chunk-size", chunk_size, "--samples", "--objective", "uwo", "--device", "cpu"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "auq.cli", "score", str(model_dir), str(data), "--out", str(two), *options,
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO
    )
    try:
        assert cli(capsys, model_dir, data, "--out", one, *options)[0] == 0  # meanwhile
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("wrote 40 of 40 rows") == 1  # rank 0 reports for both
    assert "by 2 processes" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "rows.jsonl", "two.jsonl"]
    a, b = read_jsonl(one), read_jsonl(two)
    assert [(o["row"], o["id"], o["objective"]) for o in a] == [
        (o["row"], o["id"], o["objective"]) for o in b
    ]
    for name in ("mean", "std", "samples", "reward"):
        got = np.array([o[name] for o in b], dtype=np.float64)
        np.testing.assert_allclose(got, [o[name] for o in a], rtol=0, atol=1e-5)


# -- a plain run ---------------------------------------------------------------------------


def test_plain_run_equals_score_in_memory(capsys, model_dir, rows, expected, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "new" / "scores.jsonl"
    code, stdout, err = cli(capsys, model_dir, data, "--out", out, "--chunk-size", 16)
    assert code == 0, err
    written = read_jsonl(out)
    assert all(list(o) == ["id", "row", "mean", "std"] for o in written)
    assert_output(written, rows, expected)
    lines = stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote 40 of 40 rows to {out}; ")
    assert "0 skipped by --resume" in lines[0] and " rows/s" in lines[0]
    assert "truncated to max_length=64: " in lines[0]  # the long texts are cut, and said so


@pytest.mark.parametrize(
    ("objective", "options", "penalty"),
    [("lcb", ["--k", "2"], {"k": 2.0}), ("effective", ["--beta", "0.5"], {"beta": 0.5})],
)
def test_samples_and_objective(
    capsys, model_dir, rows, expected, tmp_path, objective, options, penalty
):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    argv = [model_dir, data, "--out", out, "--samples", "--objective", objective, *options]
    code, _, err = cli(capsys, *argv, "--chunk-size", 16, "--batch-size", 5)
    assert code == 0, err
    written = read_jsonl(out)
    assert list(written[0]) == ["id", "row", "mean", "std", "samples", "reward", "objective"]
    assert_output(written, rows, expected)
    samples = torch.tensor([o["samples"] for o in written])  # (N, S)
    torch.testing.assert_close(samples, expected.samples.T, rtol=0, atol=1e-5)
    reward = torch.tensor([o["reward"] for o in written])
    want = penalized_reward(expected, objective, **penalty)
    torch.testing.assert_close(reward, want, rtol=0, atol=1e-5)
    assert {o["objective"] for o in written} == {
        f"{objective}({k}={v})" for k, v in penalty.items()
    }


def test_ids_default_to_row_numbers_or_come_from_id_field(capsys, model_dir, rows, tmp_path):
    plain = [{"prompt": r["prompt"], "response": r["response"]} for r in rows[:6]]
    data = tmp_path / "plain.jsonl"
    data.write_text(
        json.dumps(plain[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in plain[1:])
    )
    code, _, err = cli(capsys, model_dir, data, "--out", tmp_path / "a.jsonl")
    assert code == 0, err
    assert [o["id"] for o in read_jsonl(tmp_path / "a.jsonl")] == list(range(6))  # blank skipped
    keyed = write_jsonl(
        tmp_path / "keyed.jsonl", [r | {"uid": 100 + i} for i, r in enumerate(plain)]
    )
    code, _, err = cli(capsys, model_dir, keyed, "--out", tmp_path / "b.jsonl", "--id-field", "uid")
    assert code == 0, err
    assert [o["id"] for o in read_jsonl(tmp_path / "b.jsonl")] == list(range(100, 106))


def test_conversational_rows(capsys, model_dir, loaded, tmp_path):
    rows = [
        {
            "id": i,
            "prompt": [{"role": "user", "content": f"How do I cook rice? ({i})"}],
            "response": [{"role": "assistant", "content": "Rinse it and simmer." * (i + 1)}],
        }
        for i in range(5)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    code, _, err = cli(capsys, model_dir, data, "--out", tmp_path / "chat-scores.jsonl")
    assert code == 0, err
    assert_output(read_jsonl(tmp_path / "chat-scores.jsonl"), rows, in_memory(loaded, rows))


# -- interrupted runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_rows(builtin_small):
    """Enough rows that scoring them in chunks of 2 takes a few seconds (about 1,000 rows/s)."""
    return make_rows(builtin_small, 2000)


@pytest.fixture(scope="module")
def long_expected(loaded, long_rows):
    return in_memory(loaded, long_rows)


def test_sigkill_then_resume_writes_every_row_once(
    capsys, model_dir, long_rows, long_expected, tmp_path
):
    data = write_jsonl(tmp_path / "rows.jsonl", long_rows)
    out = tmp_path / "scores.jsonl"
    proc = start_scoring([model_dir, data, "--out", out, "--chunk-size", 2])
    try:
        wait_for_rows(proc, out)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes().count(b"\n")
    assert 0 < before < len(long_rows)

    # JSONL of one process resumes after its last whole line, whatever the chunk size
    code, stdout, err = cli(capsys, model_dir, data, "--out", out, "--chunk-size", 256, "--resume")
    assert code == 0, err
    assert f"; {before} skipped by --resume" in stdout
    assert_output(read_jsonl(out), long_rows, long_expected)


def test_sigint_exits_130_and_the_output_resumes(
    capsys, model_dir, long_rows, long_expected, tmp_path
):
    data = write_jsonl(tmp_path / "rows.jsonl", long_rows)
    out = tmp_path / "scores.jsonl"
    proc = start_scoring([model_dir, data, "--out", out, "--chunk-size", 2, "--samples"])
    try:
        wait_for_rows(proc, out)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.endswith("auq score: interrupted\n")
    assert out.read_bytes().count(b"\n") < len(long_rows)

    argv = [model_dir, data, "--out", out, "--chunk-size", 256, "--samples", "--resume"]
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    written = read_jsonl(out)
    assert_output(written, long_rows, long_expected)
    samples = torch.tensor([o["samples"] for o in written])
    torch.testing.assert_close(samples, long_expected.samples.T, rtol=0, atol=1e-5)


def test_torn_last_line_is_dropped_and_a_partial_chunk_completed(
    capsys, model_dir, rows, expected, tmp_path
):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    assert cli(capsys, model_dir, data, "--out", out, "--chunk-size", 8)[0] == 0
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    torn = lines[11][: len(lines[11]) // 2]  # rows 0-10 whole: chunk 1 (rows 8-15) is partial
    out.write_bytes(b"".join(lines[:11]) + torn)

    code, stdout, err = cli(capsys, model_dir, data, "--out", out, "--chunk-size", 8, "--resume")
    assert code == 0, err
    assert stdout.startswith(f"wrote 29 of 40 rows to {out}; 11 skipped by --resume")
    assert f"dropped a torn last line ({len(torn)} bytes)" in stdout
    assert_output(read_jsonl(out), rows, expected)

    done = out.read_bytes()
    code, stdout, _ = cli(capsys, model_dir, data, "--out", out, "--chunk-size", 8, "--resume")
    assert code == 0 and stdout.startswith(f"wrote 0 of 40 rows to {out}; 40 skipped")
    assert out.read_bytes() == done  # a finished output is left as it is


def test_a_bad_row_mid_stream_stops_with_a_resumable_output(
    capsys, model_dir, rows, expected, tmp_path
):
    data = tmp_path / "rows.jsonl"
    lines = [json.dumps(r) for r in rows]
    bad = [*lines[:9], '{"id": "q9", "prompt": "p", "response": 3}', *lines[10:]]
    data.write_text("\n".join(bad) + "\n")
    out = tmp_path / "scores.jsonl"
    code, _, err = cli(capsys, model_dir, data, "--out", out, "--chunk-size", 4)
    assert code == 2
    assert one_error_line(err) == (
        f"row 9 ({data}, line 10), field 'response': expected a str or a list of messages, got int"
    )
    assert len(read_jsonl(out)) == 8  # chunks 0 and 1; chunk 2 holds the bad row
    write_jsonl(data, rows)  # fixed
    code, stdout, err = cli(capsys, model_dir, data, "--out", out, "--chunk-size", 4, "--resume")
    assert code == 0, err
    assert "8 skipped by --resume" in stdout
    assert_output(read_jsonl(out), rows, expected)


def test_resume_refuses_other_penalty_options(
    capsys, model_dir, damaged_model_dir, rows, expected, tmp_path
):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    options = [data, "--out", out, "--objective", "lcb", "--chunk-size", 8]
    assert cli(capsys, model_dir, *options)[0] == 0
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:10]))  # as if killed
    kept = out.read_bytes()

    code, _, err = cli(capsys, damaged_model_dir, *options, "--k", "2", "--resume")
    assert code == 2  # refused before the model loads
    assert one_error_line(err) == (
        f"--out '{out}' was written with other options: {out}, line 1 has objective "
        "'lcb(k=1.0)', but this run writes 'lcb(k=2.0)'; resume with the options of the first "
        "run, or choose another output path"
    )
    assert out.read_bytes() == kept

    # the same penalty goes on; options the objective does not use are not part of it
    argv = [model_dir, *options, "--k", "1", "--lam", "3", "--beta", "9", "--resume"]
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    assert "10 skipped by --resume" in stdout
    written = read_jsonl(out)
    assert_output(written, rows, expected)
    assert {o["objective"] for o in written} == {"lcb(k=1.0)"}
    reward = torch.tensor([o["reward"] for o in written])
    torch.testing.assert_close(reward, penalized_reward(expected, "lcb", k=1.0), rtol=0, atol=1e-5)


# -- bad input: one line, exit 2, checked before the model loads ---------------------------


def test_missing_data_file(capsys, damaged_model_dir, tmp_path):
    code, _, err = cli(capsys, damaged_model_dir, tmp_path / "nope.jsonl", "--out", tmp_path / "o")
    assert code == 2
    assert one_error_line(err) == (
        f"DATA: data file '{tmp_path / 'nope.jsonl'}' not found; give a JSONL file (or a "
        ".parquet file) with 'prompt' and 'response' fields"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "response": "r"', "row 0 ({data}, line 1): invalid JSON (Expecting ',' "
         "delimiter, column 32)"),
        ('{"prompt": "p"}', "row 0 ({data}, line 1), field 'response': missing; the row has "
         "fields 'prompt'"),
        ('["p", "r"]', "row 0 ({data}, line 1): expected a JSON object, got list"),
        ('{"prompt": "p", "response": "r", "id": 1.5}', "row 0 ({data}, line 1), field 'id': "
         "expected a str or an integer id, got float"),
    ],
)  # fmt: skip
def test_bad_first_row_is_found_before_the_model_loads(
    capsys, damaged_model_dir, tmp_path, line, message
):
    data = tmp_path / "rows.jsonl"
    data.write_text(line + "\n")
    code, _, err = cli(capsys, damaged_model_dir, data, "--out", tmp_path / "scores.jsonl")
    assert code == 2
    assert one_error_line(err) == message.format(data=data)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "response": "r"', "row 1 ({data}, line 3): invalid JSON (Expecting ',' "
         "delimiter, column 32)"),
        ('{"prompt": "p", "reply": "r"}', "row 1 ({data}, line 3), field 'response': missing; "
         "the row has fields 'prompt', 'reply'"),
        ('{"prompt": "p", "response": "  "}', "row 1 ({data}, line 3), field 'response': empty "
         "text (whitespace only)"),
        ('{"prompt": [{"role": "user", "content": "p"}], "response": "r"}', "row 1 ({data}, "
         "line 3), field 'response': mixes a message list and a plain str with 'prompt'; give "
         "both as str or both as lists of messages"),
        ('{"prompt": "p", "response": "r", "id": "x"}', "row 1 ({data}, line 3), field 'id': "
         "present, but the first row has no id, so row numbers are the ids; give every row an "
         "id or none"),
    ],
)  # fmt: skip
def test_bad_later_row_names_file_line_and_field(capsys, model_dir, tmp_path, line, message):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "p", "response": "r"}\n\n' + line + "\n")
    out = tmp_path / "scores.jsonl"
    code, _, err = cli(capsys, model_dir, data, "--out", out, "--chunk-size", 1)
    assert code == 2
    assert one_error_line(err) == message.format(data=data)
    assert [o["row"] for o in read_jsonl(out)] == [0]  # the rows before it stay, resumable


def test_out_under_a_regular_file(capsys, damaged_model_dir, rows, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "scores.jsonl"
    code, _, err = cli(capsys, damaged_model_dir, data, "--out", out)
    assert code == 2
    assert (
        one_error_line(err) == f"--out '{out}' cannot be created: '{tmp_path / 'file'}' is a file"
    )


def test_existing_output_needs_resume(capsys, damaged_model_dir, rows, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    out.write_text('{"id": "q0", "row": 0, "mean": 1.0, "std": 0.5}\n')
    code, _, err = cli(capsys, damaged_model_dir, data, "--out", out)
    assert code == 2
    assert one_error_line(err) == (
        f"--out '{out}' already holds scored rows ({out}); pass --resume to go on after them, "
        "or choose another output path (an output is never overwritten)"
    )
    assert out.read_text() == '{"id": "q0", "row": 0, "mean": 1.0, "std": 0.5}\n'


def test_resume_against_other_data(capsys, damaged_model_dir, rows, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    out.write_text(
        '{"id": "q0", "row": 0, "mean": 1.0, "std": 0.5}\n'
        '{"id": "other", "row": 1, "mean": 1.0, "std": 0.5}\n'
    )
    code, _, err = cli(capsys, damaged_model_dir, data, "--out", out, "--resume")
    assert code == 2
    assert one_error_line(err) == (
        f"--out '{out}' was written for other data: {out}, line 2 holds row 1 with id 'other', "
        "but DATA row 1 has id 'q1'; use the data it was written for, or choose another output "
        "path"
    )
    code, _, err = cli(capsys, damaged_model_dir, data, "--out", out, "--resume", "--samples")
    assert code == 2
    assert one_error_line(err).startswith(
        f"--out '{out}' was written with other options: {out}, line 1 has fields id, row, mean, "
        "std, but this run writes id, row, mean, std, samples"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--device", "tpu"], "--device 'tpu' is not supported; valid: cpu, cuda, cuda:N"),
        (["--lam", "-1"], "argument --lam: must be a finite number >= 0, got '-1'"),
        (["--beta", "0"], "argument --beta: must be a finite number > 0, got '0'"),
        (["--chunk-size", "0"], "argument --chunk-size: must be an integer >= 1, got '0'"),
        (["--objective", "max"], "argument --objective: invalid choice: 'max' (choose from"),
    ],
)
def test_bad_options(capsys, damaged_model_dir, rows, tmp_path, options, message):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    code, _, err = cli(capsys, damaged_model_dir, data, "--out", tmp_path / "o.jsonl", *options)
    assert code == 2
    assert one_error_line(err).startswith(message)


# -- Parquet -------------------------------------------------------------------------------


def test_parquet_in_and_out_and_resume_after_a_failed_chunk(
    capsys, model_dir, rows, expected, tmp_path
):
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    import pyarrow.parquet as pq

    data = tmp_path / "rows.parquet"
    broken = [*rows[:20], rows[20] | {"response": None}, *rows[21:]]
    pq.write_table(pa.Table.from_pylist(broken), data, row_group_size=7)
    out = tmp_path / "scores.parquet"
    argv = [model_dir, data, "--out", out, "--chunk-size", 8, "--samples"]
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert one_error_line(err) == f"row 20 ({data}), field 'response': missing value (null)"
    parts = sorted(p.name for p in (tmp_path / "scores.parquet.parts").iterdir())
    assert parts == [
        "rows-000000000000-000000000008.parquet",
        "rows-000000000008-000000000016.parquet",
    ]
    assert not out.exists()  # merged only at the end

    pq.write_table(pa.Table.from_pylist(rows), data, row_group_size=7)
    code, stdout, err = cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert "16 skipped by --resume" in stdout
    assert not (tmp_path / "scores.parquet.parts").exists()
    table = pq.read_table(out)
    assert table.column_names == ["id", "row", "mean", "std", "samples"]
    assert_output(table.to_pylist(), rows, expected)
    samples = torch.tensor(table.column("samples").to_pylist())
    torch.testing.assert_close(samples, expected.samples.T, rtol=0, atol=1e-5)


def test_parquet_without_pyarrow_is_one_line(
    capsys, damaged_model_dir, rows, tmp_path, monkeypatch
):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if not installed
    out = tmp_path / "scores.parquet"
    code, _, err = cli(capsys, damaged_model_dir, data, "--out", out)
    assert code == 2
    assert one_error_line(err) == (
        f"--out '{out}' is Parquet, which needs the package 'pyarrow': pip install pyarrow (or "
        "use JSONL)"
    )
