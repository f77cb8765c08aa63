"""Where the reference policy lives on disk, and how it gets there without ever being torn.

Location
    :func:`cache_root`: ``cache_dir`` if given, else ``$AUQ_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/auq``, else ``~/.cache/auq``. A policy lives in
    ``<root>/testbed/policy-<key>``, the key hashing the world's identity and the
    full training config (:func:`policy_key`).

Layout of a policy folder
    ``model.safetensors``, ``config.json``, ``generation_config.json`` (from
    ``save_pretrained``), ``tokenizer.json``, ``tokenizer_config.json`` and
    ``policy.json``: the training record plus the SHA-256 of every other file.

Atomicity
    :func:`publish_policy` writes everything into a hidden temporary folder beside
    the target and renames it into place; a folder is therefore either complete or
    absent. Two builders racing for one key both finish; the first rename wins and
    the second discards its copy. Temporary folders a killed builder left are swept
    after six hours. :func:`read_policy` checks ``policy.json`` and every checksum
    before loading and raises :class:`~auq.utils.io.CheckpointError` naming the path
    on any damage.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from auq.utils.io import CheckpointError, read_json, write_json

__all__ = [
    "RECORD_FILE",
    "cache_root",
    "policy_dir",
    "policy_key",
    "publish_policy",
    "read_policy",
    "verify_policy_files",
]

#: bump when training or the folder layout changes: old caches are then never reused
CACHE_FORMAT = 2
RECORD_FILE = "policy.json"
_REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The auq cache folder.

    ``cache_dir`` if given, else ``$AUQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/auq``, else
    ``~/.cache/auq``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("AUQ_CACHE_DIR"):
        return Path(os.environ["AUQ_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "auq"
    return Path.home() / ".cache" / "auq"


def policy_key(world: dict[str, Any], config: dict[str, Any]) -> str:
    """16 hex digits hashing the world's identity, the full config and the cache format."""
    blob = json.dumps({"format": CACHE_FORMAT, "world": world, "config": config}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def policy_dir(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache root>/testbed/policy-<key>``."""
    return cache_root(cache_dir) / "testbed" / f"policy-{key}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_policy_files(path: str | os.PathLike) -> dict[str, Any]:
    """The record of a complete, undamaged policy folder.

    Raises
    ------
    CheckpointError
        If ``policy.json`` is missing or malformed, a required file is missing, or a
        file's SHA-256 differs from the one recorded.
    """
    path = Path(path)
    record = read_json(
        path / RECORD_FILE, what="policy record", required=("key", "config", "files")
    )
    files = record["files"]
    if not isinstance(files, dict):
        raise CheckpointError(f"{path / RECORD_FILE}: 'files' must map file names to checksums")
    missing = [name for name in _REQUIRED_FILES if name not in files]
    if missing:
        raise CheckpointError(f"{path / RECORD_FILE}: no checksum for {', '.join(missing)}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: file is missing")
        if _sha256(file) != expected:
            raise CheckpointError(f"{file}: checksum mismatch (the file is damaged or was edited)")
    return record


def read_policy(path: str | os.PathLike, *, key: str | None = None):
    """Load a policy folder written by :func:`publish_policy`.

    Parameters
    ----------
    path : str or PathLike
    key : str, optional
        The key the folder must carry (guards against a folder copied under another name).

    Returns
    -------
    model : transformers.GPT2LMHeadModel
        In eval mode, on the CPU.
    tokenizer : transformers.PreTrainedTokenizerFast
    record : dict
        The contents of ``policy.json``.

    Raises
    ------
    CheckpointError
        Whatever is wrong with the folder, with its path in the message.
    """
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    path = Path(path)
    record = verify_policy_files(path)
    if key is not None and record["key"] != key:
        raise CheckpointError(f"{path / RECORD_FILE}: key {record['key']!r} is not {key!r}")
    try:
        model = GPT2LMHeadModel.from_pretrained(path)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    except Exception as err:  # any library failure on a checksummed folder is still damage
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{path}: cannot load the policy ({type(err).__name__}: {reason})"
        ) from None
    model.eval()
    return model, tokenizer, record


def publish_policy(
    path: str | os.PathLike, model, tokenizer, record: dict[str, Any], *, replace: bool = False
) -> Path:
    """Write a policy folder atomically: build it beside ``path``, then rename it into place.

    If another builder published ``path`` first and its folder verifies, that folder is
    kept and this copy discarded; a damaged folder in the way is moved aside and removed.

    Parameters
    ----------
    path : str or PathLike
        The final folder (``policy_dir(key, ...)``).
    model : transformers.PreTrainedModel
    tokenizer : transformers.PreTrainedTokenizerBase
    record : dict
        JSON-able training record; ``files`` (the checksums) is added here.
    replace : bool
        Move an existing folder aside first, sound or not (a forced rebuild).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {f.name: _sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        write_json(tmp / RECORD_FILE, {**record, "files": files})  # written last
        tmp.chmod(0o755)  # mkdtemp makes it private (0700); a cache folder is readable
        if replace and path.exists():
            _remove_aside(path)
        for _ in range(3):
            try:
                os.rename(tmp, path)
                return path
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    raise
            try:  # someone else's folder is in the way: keep it if it is sound
                verify_policy_files(path)
                return path
            except CheckpointError:
                _remove_aside(path)
        raise CheckpointError(f"{path}: could not replace the folder after 3 tries")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _sweep_stale(path: Path, *, age_s: float = 6 * 3600) -> None:
    """Delete temporary folders of ``path`` that a killed builder left (older than ``age_s``)."""
    now = time.time()
    for pattern in (f".{path.name}.tmp-*", f".{path.name}.trash-*"):
        for old in path.parent.glob(pattern):
            try:
                if now - old.stat().st_mtime > age_s:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                pass


def _remove_aside(path: Path) -> None:
    """Rename ``path`` to a hidden name (atomic), then delete it; a vanished folder is fine."""
    trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.trash-"))
    try:
        os.replace(path, trash / "old")
    except FileNotFoundError:
        pass
    except OSError:
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
    shutil.rmtree(trash, ignore_errors=True)
