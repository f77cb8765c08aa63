"""The ``auq`` console command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from auq.cli import main


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "auq.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: auq" in out.stdout and "demo" in out.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_demo_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "--members" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.minilm
def test_demo_runs_end_to_end_small(capsys):
    main(
        [
            "demo",
            "--n-train",
            "60",
            "--n-eval",
            "20",
            "--n-test",
            "40",
            "--n-ood",
            "20",
            "--members",
            "2",
            "--epochs",
            "2",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "OOD detection AUROC" in out
