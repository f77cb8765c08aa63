"""What commands read and write, checked before any model loads.

* :func:`load_preference_data` — a JSONL file, or the built-in set (``builtin``,
  ``builtin:N``, ``builtin-ood``, ``builtin-ood:N``);
* :func:`check_model_dir` — a directory written by ``save_pretrained``;
* :class:`OutputDir` — checked up front, created only when the results are written,
  and removed again (with whatever was written into it) when writing fails.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from auq.cli.errors import CliError
from auq.data import PreferenceDataset
from auq.models.checkpoints import CONFIG_NAME as MODEL_CONFIG
from auq.utils.io import read_json

__all__ = [
    "BUILTIN_SEED",
    "MODEL_CONFIG",
    "OutputDir",
    "check_model_dir",
    "load_preference_data",
    "parse_builtin",
]

BUILTIN_SEED = 1234
BUILTIN_DEFAULT_SIZE = 2000
_BUILTIN = re.compile(r"(builtin|builtin-ood)(?::(.*))?")
_BUILTIN_FORMS = "builtin, builtin:N, builtin-ood or builtin-ood:N"


def _looks_like_path(source: str) -> bool:
    return "/" in source or os.sep in source or source.startswith(("~", "."))


def parse_builtin(source: str) -> tuple[str, int] | None:
    """``(domain, n_pairs)`` when ``source`` names the built-in set, else None.

    A name that exists as a file, or that looks like a path, is never the built-in set.

    Raises
    ------
    CliError
        For ``builtin:N`` / ``builtin-ood:N`` whose N is not a positive integer.
    """
    match = _BUILTIN.fullmatch(source)
    if match is None or Path(source).exists() or _looks_like_path(source):
        return None
    name, size = match.groups()
    if size is None:
        n = BUILTIN_DEFAULT_SIZE
    elif size.isdigit() and int(size) > 0:
        n = int(size)
    else:
        raise CliError(
            f"{name}:N needs a positive integer N (the number of pairs), got {size!r}; "
            f"e.g. {name}:500"
        )
    return ("ood" if name == "builtin-ood" else "in"), n


def load_preference_data(source: str, *, option: str = "DATA") -> PreferenceDataset:
    """Read ``source``: a JSONL file of pairs, or the built-in set (see :func:`parse_builtin`)."""
    builtin = parse_builtin(source)
    if builtin is not None:
        from auq.data.builtin import load_builtin_preferences

        domain, n = builtin
        return load_builtin_preferences(n, seed=BUILTIN_SEED, domain=domain)
    path = Path(source).expanduser()
    if path.is_dir():
        raise CliError(f"{option} {source!r} is a directory; give a JSONL file of pairs")
    if not path.is_file():
        raise FileNotFoundError(
            f"{option}: data file {source!r} not found; give a JSONL file with prompt/chosen/"
            f"rejected columns, or {_BUILTIN_FORMS}"
        )
    return PreferenceDataset.from_jsonl(path)


def check_model_dir(source: str, *, writable: bool = False, option: str = "MODEL_DIR") -> Path:
    """A model directory with a readable ``auq_config.json`` (and writable, if asked)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{option} {source!r} does not exist")
    if not path.is_dir():
        raise CliError(
            f"{option} {source!r} is not a directory (expected one from save_pretrained)"
        )
    if not (path / MODEL_CONFIG).is_file():
        raise CliError(
            f"{option} {source!r} has no {MODEL_CONFIG}: it is not a directory written by "
            "auq's save_pretrained (or it is damaged)"
        )
    read_json(path / MODEL_CONFIG, what="reward-model config")  # damaged: CheckpointError
    if writable and not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"{option} {source!r} is not writable (the command stores a file there)")
    return path


class OutputDir:
    """An output directory: checked now, created by :meth:`writing` only when results exist.

    Parameters
    ----------
    source : str
        The path as the user gave it.
    option : str
        The option's name for messages (``"--out"``).

    Raises
    ------
    CliError
        When the path is a file, lies under a file, or cannot be written.
    """

    def __init__(self, source: str, *, option: str = "--out") -> None:
        self.path, self.option, self.source = Path(source).expanduser(), option, source
        if self.path.exists():
            if not self.path.is_dir():
                raise CliError(f"{option} {source!r} exists and is not a directory")
            self._check_writable(self.path)
            return
        ancestor = self.path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise CliError(f"{option} {source!r} cannot be created: {str(ancestor)!r} is a file")
        self._check_writable(ancestor)

    def _check_writable(self, directory: Path) -> None:
        if not os.access(directory, os.W_OK | os.X_OK):
            where = "" if directory == self.path else f" (in {str(directory)!r})"
            raise CliError(f"{self.option} {self.source!r} is not writable{where}")

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Create the directory; on failure remove what this block created, then re-raise."""
        top = self.path
        while not top.parent.exists():
            top = top.parent
        created = None if self.path.exists() else top
        before = set() if created else set(self.path.iterdir())
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CliError(f"{self.option} {self.source!r} cannot be created ({err})") from None
        try:
            yield self.path
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            else:
                for entry in set(self.path.iterdir()) - before:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            raise
