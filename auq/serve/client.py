"""A small client of the reward server (standard library only: no extra to install).

::

    from auq.serve import RewardClient
    client = RewardClient("http://127.0.0.1:8000", api_key=None)
    out = client.score(["a prompt"], ["a response"], objective="lcb", k=1.0)
    out["reward"], out["std"]

Each call is one HTTP request (a fresh loopback connection costs well under a
millisecond next to a scoring call); the client holds no connection and is safe to
share between threads. A refused request raises :class:`ServerError` with the
server's message and status.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_URL", "RewardClient", "ServerError"]

#: where ``auq serve`` listens by default
DEFAULT_URL = "http://127.0.0.1:8000"


class ServerError(RuntimeError):
    """The server refused a request: ``status`` (0: unreachable), its ``field`` and message."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(f"reward server answered {status}: {message}" if status else message)
        self.status, self.field = status, field


class RewardClient:
    """Talk to ``auq serve``.

    Parameters
    ----------
    url : str, optional
        The server's base URL; default ``$AUQ_SERVER_URL``, else ``http://127.0.0.1:8000``.
    api_key : str, optional
        Bearer token; default ``$AUQ_API_KEY`` (none when unset).
    timeout : float
        Seconds to wait for an answer.
    retries : int
        Further tries when the server cannot be reached or answers 503 (busy or
        restarting), one second apart. Other refusals are not retried.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 2,
    ) -> None:
        url = url or os.environ.get("AUQ_SERVER_URL") or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("AUQ_API_KEY") or None
        self.timeout = float(timeout)
        self.retries = int(retries)

    def __repr__(self) -> str:
        return f"RewardClient({self.url!r}, api_key={'***' if self.api_key else None})"

    # -- endpoints -----------------------------------------------------------------------
    def score(
        self,
        prompts: Any,
        responses: Sequence[Any],
        *,
        objective: str | None = None,
        lam: float | None = None,
        k: float | None = None,
        beta: float | None = None,
        samples: bool = False,
    ) -> dict[str, Any]:
        """``POST /score``: ``{"mean", "std", "reward", "objective", "truncated"[, "samples"]}``.

        Options left None take the server's defaults.
        """
        body: dict[str, Any] = {"prompts": prompts, "responses": list(responses)}
        given = {"objective": objective, "lam": lam, "k": k, "beta": beta}
        body.update({key: value for key, value in given.items() if value is not None})
        if samples:
            body["samples"] = True
        return self.request("POST", "/score", body)

    def get_reward(
        self, query: Sequence[str], prompts: Sequence[str] | None = None, labels: Any = None
    ) -> dict[str, Any]:
        """``POST /get_reward`` (OpenRLHF's schema): ``{"rewards", "scores", "extra_logs"}``."""
        body: dict[str, Any] = {"query": list(query)}
        if prompts is not None:
            body["prompts"] = list(prompts)
        if labels is not None:
            body["labels"] = list(labels)
        return self.request("POST", "/get_reward", body)

    def health(self) -> dict[str, Any]:
        """``GET /health``: the model, the queue and running totals."""
        return self.request("GET", "/health")

    # -- transport -------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One JSON request, retried on 503 or an unreachable server; the decoded answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            req = urllib.request.Request(self.url + path, data, headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                    return json.loads(answer.read())
            except urllib.error.HTTPError as err:
                error = _server_error(err)
                if err.code != 503 or last:
                    raise error from None
            except TimeoutError:  # the server may still be scoring: sending again adds load
                raise ServerError(
                    0, f"no answer from {self.url} within {self.timeout:g} s (timeout=)"
                ) from None
            except (urllib.error.URLError, ConnectionError) as err:
                reason = getattr(err, "reason", err)
                if last:
                    raise ServerError(
                        0, f"cannot reach the reward server at {self.url}: {reason}"
                    ) from None
            time.sleep(1.0)
        raise AssertionError("unreachable")  # pragma: no cover


def _server_error(err: urllib.error.HTTPError) -> ServerError:
    raw = err.read()
    try:
        data = json.loads(raw)
        return ServerError(err.code, str(data.get("error", data)), data.get("field"))
    except (ValueError, AttributeError):
        return ServerError(err.code, raw.decode(errors="replace")[:500] or err.reason)
