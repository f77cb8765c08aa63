"""Dynamic batching: concurrent clients coalesced into engine calls, each answered with its rows.

The server-level tests make the batch boundaries deterministic rather than timed: a long
``max_wait_ms`` with ``max_batch_requests = n`` closes a batch exactly when its n-th
request arrives, and a token budget is checked through the largest batch the server ran.
"""

from __future__ import annotations

import asyncio
import math
import threading

import pytest
import torch
from serve_utils import live_server, offline

from auq.objectives import OBJECTIVES
from auq.serve import BatcherClosed, DynamicBatcher, Objective, QueueFull, ServeConfig

ATOL = 1e-5
OPTIONS = {"lam": 0.5, "k": 1.5, "beta": 2.0}


def client_requests(rows, n_clients: int):
    """Distinct requests: 1-4 rows each, overlapping texts, every objective, some broadcast."""
    out = []
    for c in range(n_clients):
        n = 1 + c % 4
        picked = [rows[(3 * c + j) % len(rows)] for j in range(n)]
        prompts = picked[0][0] if c % 5 == 0 else [p for p, _ in picked]
        responses = [f"{r} [client {c}]" for _, r in picked]
        out.append((prompts, responses, OBJECTIVES[c % len(OBJECTIVES)]))
    return out


def run_clients(live, requests):
    """Every request from its own thread, all at once; the answers in request order."""
    answers: list = [None] * len(requests)
    errors: list = []
    start = threading.Barrier(len(requests))

    def call(i, prompts, responses, objective):
        try:
            start.wait()
            answers[i] = live.client().score(prompts, responses, objective=objective, **OPTIONS)
        except Exception as err:  # reported below, with the client
            errors.append((i, err))

    threads = [threading.Thread(target=call, args=(i, *req)) for i, req in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return answers


def assert_own_rows(rm, requests, answers) -> None:
    """Each client got exactly its rows, in order, as offline scoring of its texts."""
    for (prompts, responses, objective), answer in zip(requests, answers, strict=True):
        rp, reward = offline(rm, prompts, responses, objective, **OPTIONS)
        assert len(answer["reward"]) == len(responses)
        for name, want in (("mean", rp.mean), ("std", rp.std), ("reward", reward)):
            got = torch.tensor(answer[name], dtype=torch.float32)
            torch.testing.assert_close(got, want.float(), rtol=0, atol=ATOL)


@pytest.fixture
def count_score_calls(serve_rm, monkeypatch):
    """Count ``serve_rm.score`` calls (the real method runs)."""
    calls = []
    real = serve_rm.score

    def counted(prompts, responses, **kw):
        calls.append(len(responses))
        return real(prompts, responses, **kw)

    monkeypatch.setattr(serve_rm, "score", counted)
    return calls


def test_many_clients_one_batch_one_score_call(serve_rm, rows, count_score_calls):
    requests = client_requests(rows, 24)
    config = ServeConfig(
        objective=Objective("lcb"), max_wait_ms=600_000, max_batch_requests=len(requests)
    )
    with live_server(serve_rm, config) as live:
        answers = run_clients(live, requests)
        totals = live.client().health()["totals"]
    assert count_score_calls == [sum(len(r[1]) for r in requests)]  # ONE engine call
    assert totals["batches"] == 1 and totals["largest_batch_requests"] == 24
    assert totals["requests"] == 24 and totals["failed_requests"] == 0
    assert_own_rows(serve_rm, requests, answers)


def test_token_budget_splits_batches(serve_rm, rows, count_score_calls):
    requests = client_requests(rows, 16)
    tokens = [
        int(serve_rm.backbone.tokenize([p] * len(r) if isinstance(p, str) else p, r).lengths.sum())
        for p, r, _ in requests
    ]
    budget = 2 * max(tokens)  # room for two requests or more, never all sixteen
    config = ServeConfig(max_batch_tokens=budget, max_wait_ms=20)
    with live_server(serve_rm, config) as live:
        answers = run_clients(live, requests)
        totals = live.client().health()["totals"]
    assert totals["largest_batch_tokens"] <= budget
    assert totals["batches"] >= math.ceil(sum(tokens) / budget) >= 2
    assert totals["batches"] == len(count_score_calls)
    assert totals["tokens"] == sum(tokens)
    assert_own_rows(serve_rm, requests, answers)


def test_batching_off_runs_one_request_per_call(serve_rm, rows, count_score_calls):
    requests = client_requests(rows, 12)
    with live_server(serve_rm, ServeConfig(max_batch_requests=1)) as live:
        answers = run_clients(live, requests)
        totals = live.client().health()["totals"]
    assert totals["batches"] == 12 and totals["largest_batch_requests"] == 1
    assert sorted(count_score_calls) == sorted(len(r[1]) for r in requests)
    assert_own_rows(serve_rm, requests, answers)


def test_get_reward_and_score_share_batches(serve_rm, rows, count_score_calls):
    """OpenRLHF and /score requests in one batch, each with its own objective."""
    sample = rows[:6]
    config = ServeConfig(
        objective=Objective("uwo", lam=0.5), max_wait_ms=600_000, max_batch_requests=2
    )
    with live_server(serve_rm, config) as live:
        out = {}

        def openrlhf():
            out["get_reward"] = live.client().get_reward(
                [p + r for p, r in sample], [p for p, _ in sample]
            )

        def score():
            out["score"] = live.client().score(
                [p for p, _ in sample], [r for _, r in sample], objective="wco"
            )

        threads = [threading.Thread(target=openrlhf), threading.Thread(target=score)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert count_score_calls == [12]
    prompts, responses = [p for p, _ in sample], [r for _, r in sample]
    _, uwo = offline(serve_rm, prompts, responses, "uwo", lam=0.5)
    _, wco = offline(serve_rm, prompts, responses, "wco")
    torch.testing.assert_close(torch.tensor(out["get_reward"]["rewards"]), uwo, rtol=0, atol=ATOL)
    torch.testing.assert_close(torch.tensor(out["score"]["reward"]), wco, rtol=0, atol=ATOL)


# -- the batcher on its own (a plain function as the engine) ----------------------------------


def test_batcher_answers_in_order_and_isolates_a_failing_request():
    seen = []

    def run_batch(jobs):
        seen.append(list(jobs))
        if "bad" in jobs:
            raise ValueError("bad job")
        return [job.upper() for job in jobs]

    async def main():
        batcher = DynamicBatcher(run_batch, max_wait_ms=600_000, max_batch_requests=3)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(j, n_rows=1, n_tokens=1) for j in ("a", "bad", "c")),
            return_exceptions=True,
        )
        await batcher.close()
        return results, batcher.stats

    results, stats = asyncio.run(main())
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad job"
    assert seen == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # the batch, then each alone
    assert stats.batches == 1 and stats.requests == 3 and stats.failed_requests == 1


def test_batcher_close_answers_queued_requests_and_refuses_new_ones():
    async def main():
        batcher = DynamicBatcher(lambda jobs: [j * 2 for j in jobs], max_wait_ms=600_000)
        batcher.start()
        queued = [asyncio.ensure_future(batcher.submit(i, n_rows=1, n_tokens=1)) for i in range(5)]
        await asyncio.sleep(0)  # let them queue (they would wait 10 minutes for company)
        assert batcher.queued_requests + batcher.running_requests >= 1
        await batcher.close()  # no waiting: the queue is answered, then the loop stops
        with pytest.raises(BatcherClosed, match="shutting down"):
            await batcher.submit(9, n_rows=1, n_tokens=1)
        return [q.result() for q in queued]

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


def test_batcher_queue_limit():
    async def main():
        batcher = DynamicBatcher(lambda jobs: jobs, max_wait_ms=600_000, max_queue_rows=5)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("a", n_rows=4, n_tokens=1))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="limit is 5"):
            await batcher.submit("b", n_rows=2, n_tokens=1)
        await batcher.close()
        return await first

    assert asyncio.run(main()) == "a"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_tokens": 0}, "max_batch_tokens must be an integer >= 1"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a finite number >= 0"),
        ({"max_wait_ms": "5"}, "max_wait_ms must be a number"),
        ({"max_batch_requests": 0}, "max_batch_requests must be an integer >= 1"),
        ({"max_queue_rows": 1.5}, "max_queue_rows must be an integer >= 1"),
    ],
)
def test_batcher_options_checked(options, message):
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(lambda jobs: jobs, **options)
