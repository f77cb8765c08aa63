"""The reward server: a Starlette app around one :class:`~auq.RewardModel`.

::

    from auq.serve import ServeConfig, create_app
    app = create_app(auq.RewardModel.from_pretrained("rm"), ServeConfig(objective=Objective("lcb")))
    uvicorn.run(app, host="127.0.0.1", port=8000)        # or: auq serve rm

Endpoints
    ``POST /score``       rows → ``{"mean", "std", "reward", ...}`` (:mod:`auq.serve.schemas`)
    ``POST /get_reward``  OpenRLHF's remote reward model → ``{"rewards", "scores", "extra_logs"}``
    ``GET /health``       the model, the queue, running totals (no key needed)

A request is read (at most ``max_request_bytes``), checked, tokenised (on the event
loop when small, else in a helper thread; its token count is its share of a batch's
budget, and its truncation counts are reported with its answer), and queued in the
:class:`~auq.serve.batcher.DynamicBatcher`.
Each batch is scored with one ``RewardModel.score`` call in the batcher's worker
thread; each request then gets exactly its own rows, in order, with the penalised
reward of its own objective. A spread calibrator saved with the model
(:class:`~auq.calibration.SpreadScaler`) rescales the rewards first, as
:mod:`auq.integrations.trl` does; point calibrators act on preference probabilities
and leave rewards alone. Truncation is counted per request (in its answer and in
``/health``); the model's own :class:`~auq.types.TruncationWarning` per batch is left
to the host process (``auq serve`` silences it).

Errors are JSON ``{"error": message, "field": name}``: 400 not JSON, 401 missing or
wrong bearer token, 413 too many bytes or rows, 422 a bad field, 503 shutting down
or the queue is full (with ``Retry-After``), 500 the model failed (the message, never
a traceback; the traceback goes to the ``auq.serve`` logger).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from auq.calibration import SpreadScaler
from auq.objectives import penalized_reward
from auq.serve.batcher import BatcherClosed, DynamicBatcher, QueueFull
from auq.serve.schemas import (
    Objective,
    RequestError,
    parse_get_reward,
    parse_json,
    parse_score,
)
from auq.utils.console import get_logger
from auq.utils.validation import check_positive_int

__all__ = ["RewardService", "ServeConfig", "create_app"]

logger = get_logger("auq.serve")

#: requests of at most this many rows are tokenised on the event loop, larger ones in a thread
INLINE_TOKENIZE_ROWS = 32


@dataclass
class ServeConfig:
    """How the server batches, limits and guards requests.

    Attributes
    ----------
    objective : Objective
        The default objective (a ``/score`` request may choose its own; ``/get_reward``
        always uses this one).
    api_key : str or None
        Bearer token required on ``/score`` and ``/get_reward``; None: open.
    max_batch_tokens : int
        Token budget of one batch (tokens of the texts, no padding).
    max_wait_ms : float
        How long the oldest queued request waits for others to join its batch.
    max_batch_requests : int or None
        Requests per batch at most; 1 turns batching off.
    max_request_rows : int
        Rows per request at most (413 beyond).
    max_request_bytes : int
        Body size at most (413 beyond).
    max_queue_rows : int or None
        Rows waiting at most (503 beyond).
    """

    objective: Objective = field(default_factory=Objective)
    api_key: str | None = None
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    max_batch_requests: int | None = None
    max_request_rows: int = 4096
    max_request_bytes: int = 16 * 2**20
    max_queue_rows: int | None = 65536

    def __post_init__(self) -> None:
        if not isinstance(self.objective, Objective):
            raise TypeError(
                f"objective must be an auq.serve.Objective, got {type(self.objective).__name__}"
            )
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        check_positive_int("max_request_rows", self.max_request_rows)
        check_positive_int("max_request_bytes", self.max_request_bytes)

    def limits(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("api_key")
        out["objective"] = self.objective.label
        return out


@dataclass
class _Job:
    prompts: list
    responses: list
    objective: Objective
    samples: bool
    truncated: dict[str, int]


def _floats(values: Any) -> list[float | None]:
    """A tensor (N,) as JSON numbers (a non-finite value becomes null)."""
    return [v if math.isfinite(v) else None for v in values.tolist()]


class RewardService:
    """The model side of the server: tokenising, batching and scoring requests.

    Parameters
    ----------
    model : RewardModel
        Anything with ``score(prompts, responses, *, progress) -> RewardPrediction``
        and a ``backbone`` with ``tokenize(prompts, responses)``.
    config : ServeConfig
    """

    def __init__(self, model: Any, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        attached = getattr(model, "calibrator_", None)
        self.spread = attached if isinstance(attached, SpreadScaler) else None
        self.batcher: DynamicBatcher[_Job, dict] = DynamicBatcher(
            self._run_batch,
            max_batch_tokens=config.max_batch_tokens,
            max_wait_ms=config.max_wait_ms,
            max_batch_requests=config.max_batch_requests,
            max_queue_rows=config.max_queue_rows,
        )
        self.truncated = Counter()
        self.started = time.monotonic()
        self._tokenizer_thread: ThreadPoolExecutor | None = None
        tokenizer = model.backbone.tokenizer
        #: trailing tokens cut from OpenRLHF responses (the model appends its own EOS)
        self.strip_tokens = tuple(
            t for t in {tokenizer.pad_token, tokenizer.eos_token} if isinstance(t, str) and t
        )

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.started = time.monotonic()
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="auq-serve-tokenize")
        self.batcher.start()

    async def close(self) -> None:
        """Finish every queued request, then stop the threads."""
        await self.batcher.close()
        if self._tokenizer_thread is not None:
            self._tokenizer_thread.shutdown(wait=True)
        stats = self.batcher.stats
        logger.info(
            "stopped after %d requests (%d rows) in %d batches",
            stats.requests,
            stats.rows,
            stats.batches,
        )

    # -- scoring -------------------------------------------------------------------------
    def _tokenize(self, prompts: list, responses: list) -> tuple[int, dict[str, int]]:
        tokens = self.model.backbone.tokenize(prompts, responses)
        stats = tokens.stats
        truncated = {"prompts": stats.n_prompt_truncated, "responses": stats.n_response_truncated}
        return int(tokens.lengths.sum()), truncated

    async def score(
        self, prompts: list, responses: list, objective: Objective, samples: bool = False
    ) -> dict[str, Any]:
        """Score N rows through the batcher: mean, std, reward [, samples], truncation."""
        try:
            if len(responses) <= INLINE_TOKENIZE_ROWS:  # microseconds: not worth a thread hop
                n_tokens, truncated = self._tokenize(prompts, responses)
            else:
                n_tokens, truncated = await asyncio.get_running_loop().run_in_executor(
                    self._tokenizer_thread, self._tokenize, prompts, responses
                )
        except (TypeError, ValueError) as err:  # a text the model's tokenizer refuses
            raise RequestError(422, None, f"cannot tokenise the rows: {err}") from None
        job = _Job(prompts, responses, objective, samples, truncated)
        result = await self.batcher.submit(job, n_rows=len(responses), n_tokens=n_tokens)
        self.truncated.update(truncated)
        return result

    def _run_batch(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """In the worker thread: ONE ``score`` call for every row of every job."""
        prompts = [p for job in jobs for p in job.prompts]
        responses = [r for job in jobs for r in job.responses]
        prediction = self.model.score(prompts, responses, progress=False)
        if self.spread is not None:
            prediction = self.spread.transform_rewards(prediction)
        # every objective is row-wise: compute each one used once over the whole batch
        rewards = {
            objective: _floats(penalized_reward(prediction, objective.name, **objective.options))
            for objective in {job.objective for job in jobs}
        }
        mean, std = _floats(prediction.mean), _floats(prediction.std)
        samples = prediction.samples.T.tolist() if any(j.samples for j in jobs) else None
        out, start = [], 0
        for job in jobs:
            rows = slice(start, start + len(job.responses))
            start = rows.stop
            result = {
                "mean": mean[rows],
                "std": std[rows],
                "reward": rewards[job.objective][rows],
                "objective": job.objective.label,
                "truncated": job.truncated,
            }
            if job.samples:
                result["samples"] = samples[rows]  # (n, S)
            out.append(result)
        return out

    # -- health --------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        model, c = self.model, self.model.config
        members = c.n_members or c.n_passes or getattr(model.head, "n_samples", None)
        attached = getattr(model, "calibrator_", None)
        return {
            "method": c.uq,
            "members": members,
            "backbone": c.backbone,
            "max_length": c.max_length,
            "calibrator": None if attached is None else type(attached).__name__,
            "spread_calibrated": self.spread is not None,
            "device": str(model.backbone.device),
        }

    def health(self) -> dict[str, Any]:
        b = self.batcher
        return {
            "status": "draining" if b.closing else "ok",
            "model": self.model_info(),
            "objective": self.config.objective.label,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "queue": {"requests": b.queued_requests, "rows": b.queued_rows},
            "running": {"requests": b.running_requests},
            "totals": {
                **b.stats.as_dict(),
                "prompts_truncated": self.truncated["prompts"],
                "responses_truncated": self.truncated["responses"],
            },
            "limits": self.config.limits(),
        }


# -- HTTP ------------------------------------------------------------------------------


def _response(data: dict[str, Any], status: int = 200, headers: dict | None = None):
    from starlette.responses import Response

    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_big = f"the request body is larger than this server's limit of {limit} bytes"
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body", f"{too_big} ({declared} bytes; --max-request-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body", f"{too_big} (--max-request-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model: Any, config: ServeConfig | None = None):
    """The Starlette app serving ``model`` (run it with uvicorn, or ``auq serve``).

    Parameters
    ----------
    model : RewardModel
        A loaded reward model, already on its device.
    config : ServeConfig, optional

    Returns
    -------
    starlette.applications.Starlette
        ``app.state.service`` is the :class:`RewardService`. The batcher starts and
        stops with the app's lifespan: on shutdown it answers every queued request.
    """
    from starlette.applications import Starlette
    from starlette.routing import Route

    config = ServeConfig() if config is None else config
    service = RewardService(model, config)
    statuses: Counter = Counter()
    key = None if config.api_key is None else config.api_key.encode()

    def authorised(request) -> bool:
        if key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)

    def endpoint(handle: Callable) -> Callable:
        async def run(request):
            if not authorised(request):
                statuses[401] += 1
                return _response(
                    {
                        "error": "missing or wrong API key: send 'Authorization: Bearer <key>'",
                        "field": "authorization",
                    },
                    401,
                    {"WWW-Authenticate": "Bearer"},
                )
            try:
                body = parse_json(await _read_body(request, config.max_request_bytes))
                data = await handle(body)
                status, headers = 200, None
            except RequestError as err:
                data, status, headers = err.body(), err.status, None
            except (BatcherClosed, QueueFull) as err:
                data, status = {"error": str(err), "field": None}, 503
                headers = {"Retry-After": "1"}
            except Exception as err:  # the model failed: the message, never the traceback
                logger.exception("scoring failed")
                data = {"error": f"scoring failed: {type(err).__name__}: {err}", "field": None}
                status, headers = 500, None
            statuses[status] += 1
            return _response(data, status, headers)

        return run

    async def score(body: Any) -> dict[str, Any]:
        req = parse_score(body, default=config.objective, max_rows=config.max_request_rows)
        return await service.score(req.prompts, req.responses, req.objective, req.samples)

    async def get_reward(body: Any) -> dict[str, Any]:
        req = parse_get_reward(
            body, max_rows=config.max_request_rows, strip_tokens=service.strip_tokens
        )
        out = await service.score(req.prompts, req.responses, config.objective)
        return {
            "rewards": out["reward"],
            "scores": out["reward"],
            "extra_logs": {"reward_mean": out["mean"], "reward_std": out["std"]},
            "objective": out["objective"],
            "truncated": out["truncated"],
        }

    async def health(request):
        data = service.health()
        data["totals"]["http"] = {str(k): v for k, v in sorted(statuses.items())}
        return _response(data)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            await service.close()

    app = Starlette(
        routes=[
            Route("/score", endpoint(score), methods=["POST"]),
            Route("/get_reward", endpoint(get_reward), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app
