"""Where training metrics go: a JSONL file, and TensorBoard when it is installed."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from auq.utils.io import strict_json

__all__ = ["MetricsWriter", "tensorboard_available"]


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


class MetricsWriter:
    """Append one JSON line per logged update to ``metrics.jsonl``; mirror to TensorBoard.

    Parameters
    ----------
    output_dir : str or None
        Nothing is written without one.
    report_to : {"auto", "jsonl", "tensorboard", "none"}
        "auto": JSONL, plus TensorBoard (``<output_dir>/tensorboard``) when installed.
    start_step : int
        On resume, lines of later steps (written after the checkpoint the run resumes
        from) are dropped from the file so that it holds each step once.
    """

    def __init__(self, output_dir: str | None, report_to: str = "auto", start_step: int = 0):
        self.path: Path | None = None
        self._tb = None
        if output_dir is None or report_to == "none":
            return
        root = Path(output_dir)
        root.mkdir(parents=True, exist_ok=True)
        if report_to in ("auto", "jsonl"):
            self.path = root / "metrics.jsonl"
            _truncate_after(self.path, start_step)
        if report_to == "tensorboard" and not tensorboard_available():
            raise ValueError(
                "report_to='tensorboard' needs the tensorboard package (pip install tensorboard); "
                "valid without it: 'auto', 'jsonl', 'none'"
            )
        if report_to == "tensorboard" or (report_to == "auto" and tensorboard_available()):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(root / "tensorboard"), purge_step=start_step + 1)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` (numbers) of update ``step``."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(strict_json({"step": step, **metrics})) + "\n")
        if self._tb is not None:
            for name, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of steps <= ``step`` (a resumed run rewrites the later ones)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):  # a torn last line of a killed run
            continue
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
