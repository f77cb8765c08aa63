"""Bad requests: a 4xx whose JSON message names the field, never a traceback, never a 500.

Every case goes to a real server; the model is never reached (its batcher counts no request).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from serve_utils import live_server

from auq.serve import ServeConfig

MSG = [{"role": "user", "content": "hi"}]

SCORE_CASES = [
    # (body, status, field, words in the message)
    ({"prompts": "p"}, 422, "responses", ["missing field 'responses'"]),
    ({"responses": ["r"]}, 422, "prompts", ["missing field 'prompts'"]),
    ({"prompts": "p", "responses": ["a", 3]}, 422, "responses[1]", ["responses[1]", "number"]),
    ({"prompts": "p", "responses": {"a": 1}}, 422, "responses", ["array", "object"]),
    ({"prompts": "p", "responses": []}, 422, "responses", ["empty"]),
    ({"prompts": ["a", "b"], "responses": ["r"]}, 422, "prompts", ["2 items", "responses 1"]),
    ({"prompts": 7, "responses": ["r"]}, 422, "prompts", ["prompts must be"]),
    ({"prompts": ["a", None], "responses": ["r", "s"]}, 422, "prompts[1]", ["prompts[1]", "null"]),
    (
        {"prompts": "p", "responses": ["r"], "objectve": "lcb"},
        422,
        "objectve",
        ["unknown field", "valid fields"],
    ),
    (
        {"prompts": "p", "responses": ["r"], "objective": "median"},
        422,
        "objective",
        ["'median'", "lcb"],
    ),
    ({"prompts": "p", "responses": ["r"], "objective": 3}, 422, "objective", ["must be a string"]),
    ({"prompts": "p", "responses": ["r"], "lam": -1}, 422, "lam", ["lam", ">= 0"]),
    ({"prompts": "p", "responses": ["r"], "k": "1"}, 422, "k", ["k must be"]),
    ({"prompts": "p", "responses": ["r"], "beta": 0}, 422, "beta", ["beta", "> 0"]),
    ({"prompts": "p", "responses": ["r"], "lam": True}, 422, "lam", ["lam"]),
    ({"prompts": "p", "responses": ["r"], "samples": "yes"}, 422, "samples", ["true or false"]),
    ({"prompts": [[{"role": "user"}]], "responses": [MSG]}, 422, "prompts[0]", ["content"]),
    ({"prompts": [{"role": "user"}], "responses": [MSG]}, 422, "prompts", ["content"]),  # one chat
    (
        {"prompts": [[{"role": "boss", "content": "x"}]], "responses": [MSG]},
        422,
        "prompts[0]",
        ["unknown role"],
    ),
    (
        {"prompts": ["p"], "responses": [MSG]},
        422,
        "responses[0]",
        ["message list", "prompts[0] is a string"],
    ),
    ({"prompts": "p", "responses": ["r"] * 9}, 413, "responses", ["9 rows", "at most 8"]),
    ([1, 2], 422, None, ["JSON object", "array"]),
]

GET_REWARD_CASES = [
    ({"prompts": ["p"]}, 422, "query", ["missing field 'query'"]),
    ({"query": ["pq", 5]}, 422, "query[1]", ["query[1] must be a string"]),
    ({"query": "pq", "prompts": 5}, 422, "prompts", ["array of strings"]),
    ({"query": ["pq", "pr"], "prompts": ["p"]}, 422, "prompts", ["1 items and query 2"]),
    ({"query": ["abc"], "prompts": ["xyz"]}, 422, "prompts[0]", ["does not occur in query[0]"]),
    ({"query": ["q"] * 9}, 413, "query", ["9 rows"]),
]


@pytest.fixture(scope="module")
def small(serve_rm):
    with live_server(serve_rm, ServeConfig(max_request_rows=8, max_request_bytes=4096)) as live:
        yield live


def post(url: str, raw: bytes, content_type: str = "application/json"):
    request = urllib.request.Request(url, raw, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def check(status_body, status, field, words) -> None:
    got, raw = status_body
    text = raw.decode()
    assert "Traceback" not in text and got == status, text
    body = json.loads(text)
    assert body["field"] == field, body
    for word in words:
        assert word in body["error"], body


@pytest.mark.parametrize(("body", "status", "field", "words"), SCORE_CASES)
def test_bad_score_request(small, body, status, field, words):
    check(post(small.url + "/score", json.dumps(body).encode()), status, field, words)


@pytest.mark.parametrize(("body", "status", "field", "words"), GET_REWARD_CASES)
def test_bad_get_reward_request(small, body, status, field, words):
    check(post(small.url + "/get_reward", json.dumps(body).encode()), status, field, words)


@pytest.mark.parametrize("path", ["/score", "/get_reward"])
def test_not_json(small, path):
    check(post(small.url + path, b'{"prompts": '), 400, None, ["not valid JSON"])
    check(post(small.url + path, b"\xff\xfe"), 400, None, ["not valid JSON"])


def raw_post(url: str, head: str, body: bytes) -> tuple[int, bytes]:
    """One request written at once on a raw socket, then its answer read.

    The whole request reaches the server before it answers, so a refusal that does not
    read the body cannot reset the connection under a client still sending it.
    """
    import socket

    host, port = url.removeprefix("http://").split(":")
    head = f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{head}"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while not (b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}")):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


def test_body_too_large(small):
    body = json.dumps({"prompts": "p", "responses": ["x" * 5000]}).encode()
    answer = raw_post(small.url, f"Content-Length: {len(body)}\r\n", body)
    check(answer, 413, "body", ["4096 bytes", "--max-request-bytes"])


def test_body_too_large_without_content_length(small):
    """A chunked body (no Content-Length) is refused once what arrived passes the limit.

    The client sends 6000 bytes of chunks and then waits for the answer.
    """
    chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"x" * 1000) for _ in range(6))
    answer = raw_post(small.url, "Transfer-Encoding: chunked\r\n", chunks)
    check(answer, 413, "body", ["larger than this server's limit of 4096"])


def test_refused_requests_never_reach_the_model(small):
    # this module's server has answered only refusals so far (the fixture is module-scoped)
    stats = small.client().health()["totals"]
    assert stats["requests"] == 0 and stats["batches"] == 0
    assert set(stats["http"]) <= {"400", "413", "422"}


def test_unknown_route_and_method(small):
    status, _ = post(small.url + "/nope", b"{}")
    assert status == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(small.url + "/score")  # GET
    assert err.value.code == 405
