"""Options of the training commands: one table, flags, ``--config`` files, and their inputs.

``auq train-rm``, ``auq dpo``, ``auq online-dpo`` and ``auq best-of-n`` declare their
options once, as :class:`Option` rows. :func:`add_options` turns the rows into argparse
flags whose defaults are *absent* (``argparse.SUPPRESS``), so that
:func:`resolve_options` can tell a flag given on the command line from a default: the
``--config`` file's values apply first, the command line's over them, and what neither
gives keeps the default of the dataclass it feeds (``DPOConfig``, ``FitConfig``, ...).

A ``--config`` file is YAML (or JSON, by its ``.json`` suffix) holding a mapping whose
keys are the flags without their dashes (``loss-type`` or ``loss_type``): an unknown
key, a malformed file or a value of the wrong kind is one line naming the file, the key
and what is valid — before anything loads.

The inputs the commands read are checked here too, cheaply and before any model
loads: :func:`check_pair_columns` reads only a data file's first row (or a Parquet
schema) for TRL's columns, :func:`read_pairs` and :func:`read_prompts` then read
the data, :func:`check_policy_dir` looks for a Hugging Face model directory, and
:func:`check_output_file` for a writable output file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from auq.cli.errors import CliError

__all__ = [
    "Option",
    "add_options",
    "check_output_file",
    "check_pair_columns",
    "check_policy_dir",
    "dataclass_options",
    "load_reward_model",
    "lora_config",
    "lora_options",
    "read_options_file",
    "read_pairs",
    "read_prompts",
    "require",
    "resolve_options",
    "writable_dir",
]

#: the kinds of value an option takes
KINDS = ("int", "float", "str", "flag")


@dataclass(frozen=True)
class Option:
    """One option of a command: the flag ``--name-with-dashes`` and the config key ``name``.

    Attributes
    ----------
    name : str
        Its ``argparse`` destination and ``--config`` key (``"loss_type"``).
    kind : {"int", "float", "str", "flag"}
        A flag is a switch: given means True (one on by default also has ``--no-name``).
    help : str
    default : Any
        Shown in ``--help`` only; the value itself comes from the dataclass it feeds.
    choices : tuple of str, optional
        Shown in ``--help`` (validated by the dataclass, for flags and files alike).
    none : bool
        The option may be None (absent by default; ``null`` in a config file).
    aliases : tuple of str
        Further names of the flag and the key (``output_dir`` for ``out``).
    metavar : str, optional
        The value's name in ``--help`` (default: N, X or VALUE by kind, or the choices).
    """

    name: str
    kind: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    none: bool = False
    aliases: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def flags(self) -> list[str]:
        return [f"--{n.replace('_', '-')}" for n in (self.name, *self.aliases)]


# -- the table → argparse ------------------------------------------------------------------


def _help(option: Option) -> str:
    text = option.help
    if option.choices:
        text += f"; one of {', '.join(option.choices)}"
    if option.kind != "flag" and option.default is not None:
        text += f" (default {option.default})"
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add a flag per option (absent unless given) and ``--config FILE``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML or JSON file of options (keys = the flags without dashes: 'loss_type: ipo'); "
        "flags given here override it",
    )
    parse = {"int": int, "float": float, "str": str}
    for option in options:
        if option.kind == "flag":
            on = option.default is True  # on by default: --name / --no-name
            parser.add_argument(
                *option.flags,
                dest=option.name,
                action=argparse.BooleanOptionalAction if on else "store_true",
                default=argparse.SUPPRESS,
                help=_help(option) + (" (on by default)" if on else ""),
            )
            continue
        metavar = option.metavar or (
            "{" + ",".join(option.choices) + "}"
            if option.choices
            else {"int": "N", "float": "X", "str": "VALUE"}[option.kind]
        )
        parser.add_argument(
            *option.flags,
            dest=option.name,
            type=parse[option.kind],
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=_help(option),
        )


def dataclass_options(
    cls: type,
    helps: dict[str, str],
    *,
    choices: dict[str, Sequence[str]] | None = None,
    skip: Iterable[str] = (),
) -> list[Option]:
    """An :class:`Option` per field of the dataclass ``cls`` (its type gives the kind).

    A field typed ``bool`` becomes a flag (``--name`` / ``--no-name`` when it is on by
    default); ``int | None`` / ``float | None`` a None-able number. A field ``helps``
    does not describe still becomes an option, with a pointer to the dataclass; a field
    of another type has no flag (so that a new field never breaks the command line).
    """
    choices, skip = choices or {}, set(skip)
    out = []
    for f in fields(cls):
        if f.name in skip:
            continue
        annotation = str(f.type).replace(" ", "")
        base = annotation.removesuffix("|None")
        if base not in ("int", "float", "str", "bool"):
            continue  # no flag for this type (skip it, or give it an Option of its own)
        default = None if f.default is MISSING else f.default
        out.append(
            Option(
                f.name,
                "flag" if base == "bool" else base,
                helps.get(f.name, f"see {cls.__name__}.{f.name}"),
                default=default,
                choices=tuple(choices[f.name]) if f.name in choices else None,
                none=annotation.endswith("|None"),
            )
        )
    return out


# -- --config files ------------------------------------------------------------------------


def _coerce(path: str, option: Option, key: str, value: Any) -> Any:
    """A config file's value for ``option`` as the flag would have parsed it."""
    if value is None:
        if option.none:
            return None
        raise CliError(f"--config {path}: {key} cannot be null; give a value or leave it out")
    if option.kind == "flag":
        if not isinstance(value, bool):
            raise CliError(f"--config {path}: {key} must be true or false, got {value!r}")
        return value
    if option.kind == "str":
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise CliError(f"--config {path}: {key} must be a string, got {value!r}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CliError(f"--config {path}: {key} must be a number, got {value!r}")
    try:
        number = float(value) if option.kind == "float" else value
        if option.kind == "int" and not isinstance(value, int):
            number = int(value) if isinstance(value, str) else value
    except ValueError:
        kind = "an integer" if option.kind == "int" else "a number"
        raise CliError(f"--config {path}: {key} must be {kind}, got {value!r}") from None
    if option.kind == "int" and isinstance(number, float):
        if not (math.isfinite(number) and number.is_integer()):
            raise CliError(f"--config {path}: {key} must be an integer, got {value!r}")
        number = int(number)
    return number


def read_options_file(path: str, options: Iterable[Option]) -> dict[str, Any]:
    """``{name: value}`` from a YAML/JSON ``--config`` file, each value of its option's kind.

    Raises
    ------
    ValueError
        For a missing or malformed file, a non-mapping, an unknown key (the message
        lists the valid ones), or a value of the wrong kind.
    """
    from auq.training.dpo_config import read_config_file

    by_name = {}
    for option in options:
        for name in (option.name, *option.aliases):
            by_name[name] = option
    raw = read_config_file(path, tuple(by_name))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        option = by_name[key]
        if option.name in out:
            raise CliError(
                f"--config {path}: {option.name} is given twice (as {' and '.join(option.flags)})"
            )
        out[option.name] = _coerce(str(path), option, key, value)
    return out


def resolve_options(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """The options given: the ``--config`` file's, with the command line's over them.

    Options given nowhere are left out (their dataclass defaults apply).
    """
    values = read_options_file(args.config, options) if args.config else {}
    for option in options:
        if hasattr(args, option.name):
            values[option.name] = getattr(args, option.name)
    return values


def require(values: dict[str, Any], name: str, flag: str) -> Any:
    """``values[name]``, or a one-line error saying the option is required."""
    if values.get(name) is None:
        raise CliError(f"{flag} is required (give it on the command line or in --config)")
    return values[name]


# -- LoRA ----------------------------------------------------------------------------------


def lora_options() -> list[Option]:
    """``--lora-r`` / ``--lora-alpha``: train LoRA adapters instead of the whole policy."""
    return [
        Option(
            "lora_r",
            "int",
            "train LoRA adapters of this rank instead of the whole policy (needs peft)",
            none=True,
        ),
        Option("lora_alpha", "float", "LoRA's alpha (default 2 x --lora-r)", none=True),
    ]


def lora_config(values: dict[str, Any]) -> dict[str, Any] | None:
    """The trainers' ``peft_config`` dict from ``lora_r`` / ``lora_alpha`` (None: no LoRA)."""
    r, alpha = values.get("lora_r"), values.get("lora_alpha")
    if r is None:
        if alpha is not None:
            raise CliError("--lora-alpha needs --lora-r (the adapters' rank)")
        return None
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise CliError(f"--lora-r must be an integer >= 1, got {r!r}")
    alpha = 2.0 * r if alpha is None else alpha
    if not (isinstance(alpha, int | float) and 0 < alpha < math.inf):
        raise CliError(f"--lora-alpha must be a finite number > 0, got {alpha!r}")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise CliError("--lora-r needs the package 'peft': pip install peft") from None
    return {"r": r, "lora_alpha": alpha, "lora_dropout": 0.0}


# -- inputs --------------------------------------------------------------------------------


def _data_file(source: str, option: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        raise CliError(f"{option} {source!r} is a directory; give a JSONL or Parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"{option}: data file {source!r} not found")
    return path


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _parquet(option: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError(f"{option} is Parquet, which needs 'pyarrow': pip install pyarrow") from None
    return pq


def _first_row(path: Path, option: str) -> dict[str, Any]:
    """The first non-blank row of a JSONL file (without reading the rest)."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CliError(
                    f"{option} {str(path)!r}, line {lineno}: not valid JSON ({err})"
                ) from None
            if not isinstance(row, dict):
                raise CliError(
                    f"{option} {str(path)!r}, line {lineno}: a row must be a JSON object, got "
                    f"{type(row).__name__}"
                )
            return row
    raise CliError(f"{option} {str(path)!r} is empty")


def _columns(path: Path, option: str) -> tuple[list[str], dict[str, Any] | None]:
    """The column names of a JSONL (its first row) or Parquet (its schema) file."""
    if _is_parquet(path):
        schema = _parquet(option).read_schema(path)
        return list(schema.names), None
    row = _first_row(path, option)
    return list(row), row


def check_pair_columns(source: str, *, option: str = "DATA") -> Path:
    """Refuse a preference file without TRL's columns, reading only its first row.

    ``chosen`` and ``rejected`` are required; ``prompt`` too, unless the pairs are in
    TRL's implicit-prompt layout (conversations, whose shared start is the prompt).
    """
    path = _data_file(source, option)
    names, row = _columns(path, option)
    implicit = row is not None and isinstance(row.get("chosen"), list)
    needed = ("chosen", "rejected") if implicit else ("prompt", "chosen", "rejected")
    missing = [c for c in needed if c not in names]
    if missing:
        raise CliError(
            f"{option} {source!r} lacks TRL's column(s) {', '.join(map(repr, missing))}; "
            f"preference pairs need prompt, chosen, rejected (optional margin); columns "
            f"present: {', '.join(map(repr, names)) or 'none'}"
        )
    return path


def read_pairs(path: Path, *, option: str = "DATA"):
    """The pairs of a checked file (:func:`check_pair_columns`) as a PreferenceDataset."""
    from auq.data import PreferenceDataset

    if _is_parquet(path):
        return PreferenceDataset.from_records(_parquet(option).read_table(path).to_pylist())
    return PreferenceDataset.from_jsonl(path)


def read_prompts(source: str, *, option: str = "PROMPTS") -> list[Any]:
    """Prompts: a ``.txt`` file (one per line), or JSONL / Parquet rows with ``prompt``."""
    path = _data_file(source, option)
    if path.suffix.lower() == ".txt":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names, _ = _columns(path, option)
        if "prompt" not in names:
            raise CliError(
                f"{option} {source!r} has no 'prompt' column (columns present: "
                f"{', '.join(map(repr, names)) or 'none'}); give rows with a prompt, or a .txt "
                "file with one prompt per line"
            )
        if _is_parquet(path):
            prompts = _parquet(option).read_table(path, columns=["prompt"])["prompt"].to_pylist()
        else:
            from auq.data.jsonl import read_jsonl_rows

            rows, where = read_jsonl_rows(path)
            prompts = []
            for row, at in zip(rows, where, strict=True):
                if not isinstance(row, dict) or "prompt" not in row:
                    raise CliError(f"{option} {at}: a row without a 'prompt' field")
                prompts.append(row["prompt"])
    bad = [
        i
        for i, p in enumerate(prompts)
        if not (isinstance(p, str) and p.strip()) and not (isinstance(p, list) and p)
    ]
    if bad:
        raise CliError(
            f"{option} {source!r}: prompt {bad[0]} is {prompts[bad[0]]!r}; every prompt must be "
            "non-empty text or a chat (a list of messages)"
        )
    if not prompts:
        raise CliError(f"{option} {source!r} holds no prompts")
    return prompts


def check_policy_dir(source: str, *, option: str = "POLICY") -> str:
    """A local policy directory must hold a Hugging Face ``config.json`` (a name passes)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CliError(f"{option} {source!r} is not a directory (expected save_pretrained's)")
        if not (path / "config.json").is_file():
            raise CliError(
                f"{option} {source!r} has no config.json: not a Hugging Face model directory"
            )
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or source.count(os.sep) > 1:
        raise FileNotFoundError(f"{option} {source!r} does not exist")
    return source  # a hub name (offline runs fail at loading, with the library's message)


def _probe(directory: Path, source: str, option: str) -> None:
    """Create and remove a file in ``directory``: permission bits do not stop root, a
    read-only or virtual file system does, and ``os.access`` cannot tell."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise CliError(f"{option} {source!r} is not writable ({err.strerror or err})") from None


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def writable_dir(source: str, *, option: str = "--out"):
    """An output directory that can be created or written (an :class:`OutputDir`)."""
    from auq.cli.inputs import OutputDir

    target = OutputDir(source, option=option)
    _probe(_nearest_existing(target.path), source, option)
    return target


def check_output_file(source: str, *, option: str = "--out") -> Path:
    """An output file that can be written: not a directory, in a writable directory."""
    path = Path(source).expanduser()
    if path.is_dir():
        raise CliError(f"{option} {source!r} is a directory; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{option} {source!r} cannot be created: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"{option} {source!r} is not writable")
    _probe(parent, source, option)
    return path


def load_reward_model(path: Path, *, cpu: bool = False):
    """The saved reward model in ``path`` (checked by ``check_model_dir``), on this rank's
    GPU when there is one (unless ``cpu``); a damaged directory is one line."""
    from auq.cli.errors import one_line
    from auq.models.reward_model import RewardModel
    from auq.scoring.distributed import default_device

    try:
        return RewardModel.from_pretrained(path, device="cpu" if cpu else default_device())
    except Exception as err:  # a damaged directory fails in many ways; name it, keep the cause
        raise CliError(
            f"cannot load the reward model in {str(path)!r}: {type(err).__name__}: {one_line(err)}"
        ) from err
