"""``auq serve``: the real command in a subprocess (graceful shutdown), and its checks in-process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from serve_utils import offline

from auq.cli import main
from auq.serve import RewardClient, ServerError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def cli(capsys, *argv):
    try:
        code = main(["serve", *(str(a) for a in argv)])
    except SystemExit as stop:  # argparse's own exits
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for option in (
        "MODEL_DIR",
        "--host",
        "--port",
        "--api-key",
        "AUQ_API_KEY",
        "--objective",
        "--max-batch-tokens",
        "--max-wait-ms",
        "--max-batch-requests",
        "--max-request-rows",
        "--max-request-bytes",
        "--device",
        "--precision",
        "--shutdown-timeout",
    ):
        assert option in out, option


def test_listed_in_auq_help(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    assert re.search(r"^\s+serve\s+serve a saved reward model", capsys.readouterr().out, re.M)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "-1"], ["--port", "integer >= 0"]),
        (["--max-wait-ms", "x"], ["--max-wait-ms", "finite number >= 0"]),
        (["--beta", "0"], ["--beta", "> 0"]),
        (["--objective", "median"], ["--objective", "invalid choice"]),
    ],
)
def test_bad_options(capsys, serve_model_dir, argv, words):
    code, _, err = cli(capsys, serve_model_dir, *argv)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert all(w in err for w in words), err


def test_missing_model_dir(capsys, tmp_path):
    code, _, err = cli(capsys, tmp_path / "nope", "--port", "0")
    assert code == 2 and err.startswith("auq serve: error: MODEL_DIR") and "does not exist" in err


def test_port_in_use(capsys, serve_model_dir):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        code, _, err = cli(capsys, serve_model_dir, "--port", port)
    finally:
        taken.close()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_non_loopback_without_key_warns(capsys, serve_model_dir, tmp_path, monkeypatch):
    """The warning comes before the model loads (a damaged model stops the run right after)."""
    damaged = tmp_path / "rm"
    shutil.copytree(serve_model_dir, damaged)
    (damaged / "head" / "head.safetensors").write_bytes(b"not weights")
    monkeypatch.delenv("AUQ_API_KEY", raising=False)
    code, _, err = cli(capsys, damaged, "--host", "0.0.0.0", "--port", "0")
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("auq serve: warning: listening on 0.0.0.0 without an API key")
    assert lines[1].startswith("auq serve: error: cannot load the reward model")
    monkeypatch.setenv("AUQ_API_KEY", "k")  # with a key: no warning
    code, _, err = cli(capsys, damaged, "--host", "0.0.0.0", "--port", "0")
    assert code == 2 and "warning" not in err


def _start(model_dir, *argv, env=None):
    proc = subprocess.Popen(
        [sys.executable, "-m", "auq.cli", "serve", str(model_dir), "--port", "0", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ENV,
        cwd=REPO,
    )
    seen = ""
    for line in proc.stderr:  # the ready line names the address (warnings may come first)
        seen += line
        match = re.search(r"on (http://127\.0\.0\.1:\d+);", line)
        if match is not None:
            return proc, match[1], line
    proc.kill()
    raise AssertionError(f"auq serve did not start:\n{seen}")


def test_graceful_shutdown_answers_the_request_in_flight(serve_model_dir, serve_rm, rows):
    """SIGTERM while a request sits in the queue: it is answered, then the server exits.

    ``--max-wait-ms 600000`` keeps the request queued (waiting for company) until the
    shutdown tells the batcher to stop waiting, so it is surely in flight at SIGTERM.
    """
    env = {**ENV, "AUQ_API_KEY": "from-env"}
    proc, url, ready = _start(
        serve_model_dir, "--max-wait-ms", "600000", "--objective", "lcb", env=env
    )
    try:
        assert "heads reward model (3 members, cpu)" in ready and "auth on" in ready
        client = RewardClient(url, api_key="from-env", retries=0)
        with pytest.raises(ServerError) as refused:  # the key came from AUQ_API_KEY
            RewardClient(url, api_key="other", retries=0).score("p", ["r"])
        assert refused.value.status == 401
        prompts, responses = [p for p, _ in rows[:5]], [r for _, r in rows[:5]]
        answer, failure = {}, []

        def call():
            try:
                answer.update(client.score(prompts, responses))
            except Exception as err:
                failure.append(err)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 120  # a hang guard, not a measurement
        while client.health()["queue"]["requests"] != 1:
            assert time.monotonic() < deadline and caller.is_alive()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        caller.join(timeout=120)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not failure, failure
    rp, reward = offline(serve_rm, prompts, responses, "lcb")
    torch.testing.assert_close(torch.tensor(answer["reward"]), reward, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(answer["std"]), rp.std, rtol=0, atol=1e-5)
    assert proc.returncode == -signal.SIGTERM  # uvicorn re-raises the signal once it is done
    assert "stopped after 1 requests (5 rows) in 1 batches" in stderr
    assert "Traceback" not in stderr
    with pytest.raises(ServerError) as gone:
        client.health()
    assert gone.value.status == 0 and "cannot reach" in str(gone.value)


def test_json_is_plain_json(serve_model_dir):
    """The answers are strict JSON (no NaN), readable by any client."""
    proc, url, _ = _start(serve_model_dir, "--objective", "wco")
    try:
        import urllib.request

        body = json.dumps({"prompts": "p", "responses": ["a", "b"], "samples": True}).encode()
        request = urllib.request.Request(url + "/score", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as answer:
            assert answer.headers["Content-Type"] == "application/json"
            data = json.loads(answer.read(), parse_constant=lambda c: pytest.fail(f"JSON {c}"))
        assert data["objective"] == "wco" and len(data["samples"]) == 2
        assert data["reward"] == [min(s) for s in data["samples"]]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "auq serve: interrupted" in stderr  # Ctrl-C
