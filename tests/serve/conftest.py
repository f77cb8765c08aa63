"""A tiny fitted reward model saved once; a module-wide live server (see serve_utils).

The model: a 2-layer GPT-2 (byte-level BPE with a chat template) with K = 3 heads fitted
for one epoch, ``max_length=256`` (a long text is truncated).
"""

from __future__ import annotations

import pytest
from serve_utils import live_server

import auq
from auq.serve import ServeConfig

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


@pytest.fixture(scope="session")
def serve_model_dir(tiny_gpt2_dir, builtin_small, tmp_path_factory):
    train, _ = builtin_small
    rm = auq.RewardModel.from_backbone(tiny_gpt2_dir, n_members=3, max_length=256)
    rm.fit(train.select(range(24)), epochs=1, progress=False)
    path = tmp_path_factory.mktemp("serve-rm")
    rm.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def serve_rm(serve_model_dir):
    """The saved model as ``auq serve`` loads it (feature cache off)."""
    rm = auq.RewardModel.from_pretrained(serve_model_dir)
    rm.scoring = rm.scoring.replace(feature_cache=False)
    return rm


@pytest.fixture(scope="session")
def rows(builtin_small):
    """40 distinct (prompt, response) rows; prompts shared by several rows (best-of-n)."""
    _, test = builtin_small
    out = []
    for i in range(40):
        j = (i // 3) % len(test)
        response = test.chosen[j] if i % 2 else test.rejected[j]
        out.append((test.prompts[j], f"{response} ({i})"))
    return out


@pytest.fixture(scope="module")
def server(serve_rm):
    """A server with the default config but objective lcb (k = 1)."""
    from auq.serve import Objective

    with live_server(serve_rm, ServeConfig(objective=Objective("lcb", k=1.0))) as live:
        yield live
