"""Every endpoint of the reward server through a real uvicorn server on loopback.

Each answer is checked against offline scoring of the same texts (``rm.score`` and
``penalized_reward``), so the tests fail if a row is lost, moved or scored differently.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from serve_utils import live_server, offline

from auq.objectives import OBJECTIVES
from auq.serve import Objective, RewardClient, ServeConfig, ServerError

ATOL = 1e-5


def close(got, want) -> None:
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float32), want.float(), rtol=0, atol=ATOL
    )


def test_score_per_row_prompts_matches_offline(server, serve_rm, rows):
    prompts, responses = [p for p, _ in rows[:9]], [r for _, r in rows[:9]]
    out = server.client().score(prompts, responses)
    rp, reward = offline(serve_rm, prompts, responses, "lcb", k=1.0)
    close(out["mean"], rp.mean)
    close(out["std"], rp.std)
    close(out["reward"], reward)
    assert out["objective"] == "lcb(k=1.0)"
    assert out["truncated"] == {"prompts": 0, "responses": 0}
    assert "samples" not in out


def test_score_broadcasts_one_prompt(server, serve_rm, rows):
    prompt, responses = rows[0][0], [r for _, r in rows[:5]]
    out = server.client().score(prompt, responses, objective="mean")
    rp, _ = offline(serve_rm, prompt, responses)
    close(out["mean"], rp.mean)
    close(out["reward"], rp.mean)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_score_every_objective(server, serve_rm, rows, objective):
    prompts, responses = [p for p, _ in rows[:6]], [r for _, r in rows[:6]]
    options = {"lam": 0.3, "k": 2.0, "beta": 0.5}
    out = server.client().score(prompts, responses, objective=objective, **options)
    _, reward = offline(serve_rm, prompts, responses, objective, **options)
    close(out["reward"], reward)
    option = {"uwo": "lam", "lcb": "k", "effective": "beta"}.get(objective)
    assert out["objective"] == (
        objective if option is None else f"{objective}({option}={options[option]})"
    )


def test_score_samples_are_the_members(server, serve_rm, rows):
    prompts, responses = [p for p, _ in rows[:4]], [r for _, r in rows[:4]]
    out = server.client().score(prompts, responses, samples=True)
    rp, _ = offline(serve_rm, prompts, responses)
    assert len(out["samples"]) == 4 and all(len(s) == 3 for s in out["samples"])  # (N, S)
    close(out["samples"], rp.samples.T)


def test_score_chat_rows(server, serve_rm):
    prompts = [
        [{"role": "user", "content": "How do I cook rice?"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Learn a language?"},
        ],
    ]
    responses = [
        [{"role": "assistant", "content": "Rinse it, simmer it covered."}],
        [{"role": "assistant", "content": "Write small programs every day."}],
    ]
    out = server.client().score(prompts, responses)
    rp, reward = offline(serve_rm, prompts, responses, "lcb", k=1.0)
    close(out["mean"], rp.mean)
    close(out["reward"], reward)


@pytest.mark.filterwarnings("ignore::auq.types.TruncationWarning")
def test_truncation_counted_per_request(serve_rm, rows):
    """Two requests in one batch: only the one with a long response reports a cut."""
    import threading

    long_response = " ".join(["rinse the rice and simmer it"] * 40)  # far beyond 256 tokens
    config = ServeConfig(max_wait_ms=60_000, max_batch_requests=2)  # the two share a batch
    with live_server(serve_rm, config) as live:
        answers = {}

        def call(name, responses):
            answers[name] = live.client().score(rows[0][0], responses)

        threads = [
            threading.Thread(target=call, args=("long", [rows[0][1], long_response])),
            threading.Thread(target=call, args=("short", [rows[1][1]])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = live.client().health()
    rp, _ = offline(serve_rm, rows[0][0], [rows[0][1], long_response])
    cut = rp.truncation  # what scoring the long request alone cuts
    assert cut.n_response_truncated == 1
    assert answers["long"]["truncated"] == {
        "prompts": cut.n_prompt_truncated,
        "responses": cut.n_response_truncated,
    }
    assert answers["short"]["truncated"] == {"prompts": 0, "responses": 0}
    assert health["totals"]["batches"] == 1 and health["totals"]["responses_truncated"] == 1
    close(answers["long"]["mean"], rp.mean)


# -- OpenRLHF ---------------------------------------------------------------------------


def test_get_reward_openrlhf_schema(server, serve_rm, rows):
    """query = prompt + response (+ OpenRLHF's trailing EOS/padding); labels unused."""
    eos = serve_rm.backbone.tokenizer.eos_token
    sample = rows[:5]
    query = [p + r + eos * (i % 3) for i, (p, r) in enumerate(sample)]
    body = {
        "query": query,
        "prompts": [p for p, _ in sample],
        "labels": ["" for _ in sample],
        "datasources": ["x"] * 5,  # further OpenRLHF fields are accepted
    }
    out = server.client().request("POST", "/get_reward", body)
    rp, reward = offline(serve_rm, [p for p, _ in sample], [r for _, r in sample], "lcb", k=1.0)
    assert set(out) >= {"rewards", "scores", "extra_logs"}
    close(out["rewards"], reward)
    close(out["scores"], reward)
    close(out["extra_logs"]["reward_std"], rp.std)
    close(out["extra_logs"]["reward_mean"], rp.mean)
    assert len(out["extra_logs"]["reward_std"]) == 5


def test_get_reward_prompt_after_bos(server, serve_rm, rows):
    prompt, response = rows[2]
    out = server.client().get_reward(["<|endoftext|>" + prompt + response], [prompt])
    _, reward = offline(serve_rm, [prompt], [response], "lcb", k=1.0)
    close(out["rewards"], reward)


def test_get_reward_without_prompts_scores_the_whole_query(server, serve_rm, rows):
    query = [p + r for p, r in rows[:3]]
    out = server.client().get_reward(query)
    _, reward = offline(serve_rm, [""] * 3, query, "lcb", k=1.0)
    close(out["rewards"], reward)


# -- health -----------------------------------------------------------------------------


def test_health(serve_rm, rows):
    with live_server(serve_rm, ServeConfig(objective=Objective("uwo", lam=0.25))) as live:
        client = live.client()
        before = client.health()
        client.score([p for p, _ in rows[:3]], [r for _, r in rows[:3]])
        after = client.health()
    assert before["status"] == "ok"
    assert before["model"]["method"] == "heads" and before["model"]["members"] == 3
    assert before["model"]["max_length"] == 256 and before["model"]["device"] == "cpu"
    assert before["objective"] == "uwo(lam=0.25)"
    assert before["queue"] == {"requests": 0, "rows": 0}
    assert before["totals"]["requests"] == 0
    assert after["totals"]["requests"] == 1 and after["totals"]["rows"] == 3
    assert after["totals"]["batches"] == 1 and after["totals"]["http"] == {"200": 1}
    assert after["uptime_s"] >= before["uptime_s"] >= 0
    assert after["limits"]["max_request_rows"] == 4096


# -- auth -------------------------------------------------------------------------------


def test_api_key(serve_rm, rows):
    prompt, response = rows[0]
    with live_server(serve_rm, ServeConfig(api_key="s3cret")) as live:
        for key in (None, "wrong", "s3cret-but-longer"):
            for call in (
                lambda c: c.score(prompt, [response]),
                lambda c: c.get_reward([prompt + response]),
            ):
                with pytest.raises(ServerError) as err:
                    call(RewardClient(live.url, api_key=key, retries=0))
                assert err.value.status == 401 and "API key" in str(err.value)
        # a bare token without the Bearer scheme is refused too
        request = urllib.request.Request(
            live.url + "/score",
            json.dumps({"prompts": prompt, "responses": [response]}).encode(),
            {"Authorization": "s3cret", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request)
        assert err.value.code == 401 and err.value.headers["WWW-Authenticate"] == "Bearer"
        good = RewardClient(live.url, api_key="s3cret", retries=0)
        assert len(good.score(prompt, [response])["reward"]) == 1
        assert len(good.get_reward([prompt + response], [prompt])["rewards"]) == 1
        assert RewardClient(live.url, retries=0).health()["status"] == "ok"  # health is open
        assert live.service.batcher.stats.requests == 2  # refused requests never reached the model
