"""Features of texts a frozen backbone has already encoded, kept for reuse.

``fit`` encodes the training pairs, ``predict`` and ``calibrate`` often encode the
same pairs again; with a frozen backbone those features cannot change, so
:class:`FeatureCache` keeps them: keyed by the *token ids* of each text (a 128-bit
BLAKE2 digest; the text format, chat template and truncation are all in the ids)
and by a fingerprint of the backbone (:func:`backbone_fingerprint`: its class,
config, settings, the autocast precision and device type, and a sample of every
weight), so a changed model, setting or precision never reads stale features.

Memory is bounded (``max_bytes``; least recently used blocks go first). With a
``directory`` every stored block is also written there as a safetensors file
(``<fingerprint>/<digest>.safetensors``, written atomically), and a later process
finds them: features of a large data set survive a restart.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from auq.scoring.tokenization import TokenizedTexts
from auq.utils.console import get_logger

__all__ = ["FeatureCache", "backbone_fingerprint", "text_digests"]

_DIGEST_BYTES = 16
_SAMPLE = 64  # values per weight tensor in the fingerprint (first, last, strided)
_log = get_logger("auq.scoring")


def text_digests(tokenized: TokenizedTexts) -> list[bytes]:
    """A 128-bit digest of each item's token ids (and segment ids), length N."""
    flat, offsets, types = tokenized.packed
    ids = flat.astype(np.int64, copy=False)
    out = []
    for i in range(len(tokenized)):
        h = hashlib.blake2b(ids[offsets[i] : offsets[i + 1]].tobytes(), digest_size=_DIGEST_BYTES)
        if types is not None:
            h.update(b"|" + types[offsets[i] : offsets[i + 1]].tobytes())
        out.append(h.digest())
    return out


def backbone_fingerprint(module: nn.Module, settings: Iterable[object]) -> str:
    """A hex digest of a module's weights (sampled) and of ``settings``.

    Every parameter and buffer contributes its name, shape, dtype and up to 3 × 64
    values (its first, last and evenly strided elements), so any realistic change of
    the weights — training, loading others, another dtype — changes the fingerprint
    at a cost of a few hundred small reads, not a pass over every weight.
    """
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for item in settings:
        h.update(repr(item).encode() + b"\0")
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, t in tensors:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        step = max(1, flat.numel() // _SAMPLE)
        picks = torch.cat([flat[:_SAMPLE], flat[-_SAMPLE:], flat[::step][:_SAMPLE]])
        h.update(picks.double().cpu().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Features by (backbone fingerprint, text digest), bounded in memory, optionally on disk.

    Parameters
    ----------
    max_bytes : int
        Memory for cached features (host memory; least recently used blocks are
        dropped). 0 keeps nothing in memory (with a ``directory``, disk only).
    directory : str or Path, optional
        Also store blocks there (safetensors) and find blocks earlier runs stored.

    Notes
    -----
    Features are stored on the CPU in blocks, one per encoding call; a block's
    shape is (..., n, d) — (n, d) for one backbone, (S, n, d) for member passes.
    """

    def __init__(self, max_bytes: int = 1 << 30, directory: str | Path | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.directory = None if directory is None else Path(directory)
        self._blocks: OrderedDict[str, Tensor] = OrderedDict()  # block id → (..., n, d)
        self._block_keys: dict[str, list[tuple[str, bytes]]] = {}
        self._index: dict[tuple[str, bytes], tuple[str, int]] = {}  # key → (block, row)
        self._disk_scanned: set[str] = set()
        self.n_bytes = 0

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        where = "" if self.directory is None else f", directory={str(self.directory)!r}"
        return (
            f"FeatureCache(texts={len(self)}, bytes={self.n_bytes}, "
            f"max_bytes={self.max_bytes}{where})"
        )

    def clear(self) -> None:
        """Forget everything held in memory (files on disk stay)."""
        self._blocks.clear()
        self._block_keys.clear()
        self._index.clear()
        self._disk_scanned.clear()
        self.n_bytes = 0

    # -- lookup ---------------------------------------------------------------------
    def lookup(self, fingerprint: str, digests: list[bytes]) -> tuple[np.ndarray, Tensor | None]:
        """Cached features of the items that have them.

        Returns
        -------
        hits : bool array, shape (N,)
        features : Tensor, shape (..., n_hits, d), on the CPU — or None without hits.
        """
        self._scan_disk(fingerprint)
        where = [self._index.get((fingerprint, d)) for d in digests]
        hits = np.array([w is not None for w in where], dtype=bool)
        if not hits.any():
            return hits, None
        found = [w for w in where if w is not None]
        blocks = np.array([w[0] for w in found], dtype=object)
        rows = np.array([w[1] for w in found], dtype=np.int64)
        out: Tensor | None = None
        for block_id in dict.fromkeys(blocks.tolist()):  # one gather per block
            mine = np.flatnonzero(blocks == block_id)
            features = self._load_block(block_id)[..., torch.from_numpy(rows[mine]), :]
            if out is None:
                out = features.new_empty((*features.shape[:-2], len(found), features.shape[-1]))
            out[..., torch.from_numpy(mine), :] = features
        return hits, out

    def _load_block(self, block_id: str) -> Tensor:
        if block_id in self._blocks:
            self._blocks.move_to_end(block_id)
            return self._blocks[block_id]
        from safetensors.torch import load_file

        features = load_file(block_id)["features"]  # a disk block: read on first use
        self._hold(block_id, features)
        return features

    # -- storing --------------------------------------------------------------------
    def store(self, fingerprint: str, digests: list[bytes], features: Tensor) -> None:
        """Keep ``features`` (..., N, d) of the items with ``digests`` (length N)."""
        features = features.detach().to("cpu", copy=True).contiguous()
        block_hash = hashlib.blake2b(b"".join(digests), digest_size=_DIGEST_BYTES).hexdigest()
        block_id = f"mem:{fingerprint}:{block_hash}"
        if self.directory is not None:
            block_id = str(self._write_block(fingerprint, block_hash, digests, features))
        keys = [(fingerprint, d) for d in digests]
        for row, key in enumerate(keys):
            self._index[key] = (block_id, row)
        self._block_keys[block_id] = keys
        self._hold(block_id, features)

    def _hold(self, block_id: str, features: Tensor) -> None:
        size = features.numel() * features.element_size()
        if block_id not in self._blocks:
            self._blocks[block_id] = features
            self.n_bytes += size
        while self.n_bytes > self.max_bytes and self._blocks:
            old, tensor = self._blocks.popitem(last=False)
            self.n_bytes -= tensor.numel() * tensor.element_size()
            if not old.startswith("mem:"):
                continue  # on disk: the index still finds it there
            for key in self._block_keys.pop(old, []):
                if self._index.get(key, (None,))[0] == old:
                    del self._index[key]

    # -- disk -----------------------------------------------------------------------
    def _write_block(
        self, fingerprint: str, block_hash: str, digests: list[bytes], features: Tensor
    ) -> Path:
        from safetensors.torch import save_file

        folder = self.directory / fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{block_hash}.safetensors"  # (re)written whole: a damaged one is replaced
        keys = torch.from_numpy(np.frombuffer(b"".join(digests), dtype=np.uint8).copy())
        tensors = {"features": features, "digests": keys.view(len(digests), _DIGEST_BYTES)}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".block.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def _scan_disk(self, fingerprint: str) -> None:
        """Index the blocks earlier runs wrote for ``fingerprint`` (read once per process)."""
        if self.directory is None or fingerprint in self._disk_scanned:
            return
        self._disk_scanned.add(fingerprint)
        from safetensors import safe_open

        for path in sorted((self.directory / fingerprint).glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = f.get_tensor("digests").numpy()
            except Exception as err:  # a damaged block is skipped (and said), never fatal
                _log.warning("feature cache: skipping unreadable block %s (%s)", path, err)
                continue
            block_keys = [(fingerprint, bytes(row)) for row in keys]
            for row, key in enumerate(block_keys):
                self._index.setdefault(key, (str(path), row))
            self._block_keys[str(path)] = block_keys
