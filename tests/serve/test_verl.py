"""verl's custom reward functions against a live server (no verl needed: verl only calls them)."""

from __future__ import annotations

import pytest
import torch
from serve_utils import live_server, offline

from auq.integrations.verl import compute_score, compute_score_batch
from auq.serve import Objective, ServeConfig, ServerError


@pytest.fixture(scope="module")
def verl_server(serve_rm):
    config = ServeConfig(objective=Objective("lcb", k=1.0), api_key="verl-key")
    with live_server(serve_rm, config) as live:
        yield live


def test_compute_score_matches_offline(verl_server, serve_rm, rows):
    prompt, response = rows[4]
    out = compute_score(
        "openai/gsm8k",
        response,
        "42",
        extra_info={"question": prompt, "split": "train", "index": 3},
        url=verl_server.url,
        api_key="verl-key",
    )
    rp, reward = offline(serve_rm, [prompt], [response], "lcb", k=1.0)
    assert set(out) == {"score", "reward_mean", "reward_std"}
    assert out["score"] == pytest.approx(float(reward[0]), abs=1e-5)
    assert out["reward_std"] == pytest.approx(float(rp.std[0]), abs=1e-5)
    assert out["reward_mean"] == pytest.approx(float(rp.mean[0]), abs=1e-5)


def test_compute_score_url_and_key_from_env(verl_server, serve_rm, rows, monkeypatch):
    monkeypatch.setenv("AUQ_SERVER_URL", verl_server.url)
    monkeypatch.setenv("AUQ_API_KEY", "verl-key")
    prompt, response = rows[5]
    out = compute_score("src", response, None, {"prompt": prompt}, objective="uwo", lam=2.0)
    _, reward = offline(serve_rm, [prompt], [response], "uwo", lam=2.0)
    assert out["score"] == pytest.approx(float(reward[0]), abs=1e-5)


def test_compute_score_chat_prompt_and_prompt_key(verl_server, serve_rm):
    chat = [{"role": "user", "content": "How do I cook rice?"}]
    out = compute_score(
        "src",
        "Rinse it and simmer.",
        None,
        {"messages": chat},
        prompt_key="messages",
        url=verl_server.url,
        api_key="verl-key",
    )
    _, reward = offline(
        serve_rm, [chat], [[{"role": "assistant", "content": "Rinse it and simmer."}]], "lcb"
    )
    assert out["score"] == pytest.approx(float(reward[0]), abs=1e-5)


def test_compute_score_batch_matches_offline(verl_server, serve_rm, rows):
    sample = rows[:7]
    out = compute_score_batch(
        ["src"] * 7,
        [r for _, r in sample],
        ["gt"] * 7,
        [{"question": p} for p, _ in sample],
        url=verl_server.url,
        api_key="verl-key",
        chunk_rows=3,  # three requests
    )
    rp, reward = offline(serve_rm, [p for p, _ in sample], [r for _, r in sample], "lcb")
    torch.testing.assert_close(torch.tensor([o["score"] for o in out]), reward, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor([o["reward_std"] for o in out]), rp.std, rtol=0, atol=1e-5
    )


def test_no_prompt_is_refused_with_a_message(verl_server):
    with pytest.raises(ValueError, match=r"extra_info keys \['index'\].*extra_info\['prompt'\]"):
        compute_score("src", "r", None, {"index": 1}, url=verl_server.url, api_key="verl-key")
    with pytest.raises(ValueError, match=r"row 1: no prompt"):
        compute_score_batch(
            ["s", "s"], ["a", "b"], [None, None], [{"prompt": "p"}, None], url=verl_server.url
        )


def test_server_refusals_raise(verl_server):
    with pytest.raises(ServerError) as err:
        compute_score("src", "r", None, {"prompt": "p"}, url=verl_server.url, api_key="wrong")
    assert err.value.status == 401
    with pytest.raises(ServerError) as err:
        compute_score(
            "src",
            "r",
            None,
            {"prompt": "p"},
            url=verl_server.url,
            api_key="verl-key",
            objective="median",
        )
    assert err.value.status == 422 and err.value.field == "objective"
