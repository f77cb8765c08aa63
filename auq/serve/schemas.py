"""Request bodies of the reward server, checked field by field.

Every problem becomes a :class:`RequestError` whose message names the field
(``responses[3]``, ``lam``) and whose status is the HTTP answer: 400 for a body
that is not JSON, 413 for too many rows, 422 for a field of the wrong kind or
value. Nothing here touches the model: a request that passes is safe to queue.

``POST /score``::

    {"prompts": "a prompt" | [...N prompts...],        # str or message list; one broadcasts
     "responses": [...N responses...],
     "objective": "lcb", "lam": 0.5, "k": 1.0, "beta": 1.0,   # optional: server defaults
     "samples": false}                                         # optional

``POST /get_reward`` (OpenRLHF's remote reward model)::

    {"query": [...N prompt+response texts...], "prompts": [...N prompts...], "labels": [...]}

``labels`` and any further fields OpenRLHF sends are accepted and not used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from auq.data.validation import RowError, check_messages
from auq.objectives import OBJECTIVES

__all__ = [
    "SCORE_FIELDS",
    "Objective",
    "RequestError",
    "RewardRequest",
    "ScoreRequest",
    "parse_get_reward",
    "parse_json",
    "parse_score",
]

#: the fields ``POST /score`` accepts (any other is refused: it is most likely a typo)
SCORE_FIELDS = ("prompts", "responses", "objective", "lam", "k", "beta", "samples")

#: the penalty option each objective uses (``mean`` and ``wco`` have none)
_PENALTY = {"uwo": "lam", "lcb": "k", "effective": "beta"}


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status``, the ``field`` at fault, a message."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True)
class Objective:
    """An objective of :func:`auq.objectives.penalized_reward` and its options."""

    name: str = "mean"
    lam: float = 0.5
    k: float = 1.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            listed = ", ".join(OBJECTIVES)
            raise RequestError(
                422, "objective", f"objective {self.name!r} is not supported; valid: {listed}"
            )
        for name, positive in (("lam", False), ("k", False), ("beta", True)):
            object.__setattr__(self, name, _number(name, getattr(self, name), positive=positive))

    @property
    def options(self) -> dict[str, float]:
        return {"lam": self.lam, "k": self.k, "beta": self.beta}

    @property
    def label(self) -> str:
        """The objective with the option it uses: ``"lcb(k=1.0)"``, ``"mean"``."""
        option = _PENALTY.get(self.name)
        return self.name if option is None else f"{self.name}({option}={getattr(self, option)!r})"


@dataclass
class ScoreRequest:
    """A checked ``POST /score`` body: N (prompt, response) rows and what to return."""

    prompts: list
    responses: list
    objective: Objective
    samples: bool = False

    def __len__(self) -> int:
        return len(self.responses)


@dataclass
class RewardRequest:
    """A checked ``POST /get_reward`` body: the rows split into prompt and response."""

    prompts: list[str]
    responses: list[str]

    def __len__(self) -> int:
        return len(self.responses)


# -- helpers -------------------------------------------------------------------------


def _number(name: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise RequestError(422, name, f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], Mapping)


def _check_text(where: str, value: Any) -> None:
    """A text is a str or a non-empty list of ``{"role", "content"}`` messages."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise RequestError(
            422, where, f"{where} must be a string or a list of messages, got {_kind(value)}"
        )
    try:
        check_messages(where, value)
    except RowError as err:
        raise RequestError(422, where, f"{where}: {err.reason}") from None


def _check_rows(field: str, n: int, max_rows: int) -> None:
    if n == 0:
        raise RequestError(422, field, f"{field} is empty: send at least one row")
    if n > max_rows:
        raise RequestError(
            413,
            field,
            f"{field} has {n} rows and this server takes at most {max_rows} per request "
            "(--max-request-rows): split the request",
        )


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body (400 with the parser's message when it is not JSON)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, None, f"the request body is not valid JSON: {err}") from None


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError(422, None, f"the request body must be a JSON object, got {_kind(body)}")
    return body


# -- POST /score -------------------------------------------------------------------------


def parse_score(body: Any, *, default: Objective, max_rows: int) -> ScoreRequest:
    """Check a ``POST /score`` body.

    Parameters
    ----------
    body : Any
        The decoded JSON body.
    default : Objective
        The server's objective; the request may change the name and any option.
    max_rows : int
        Rows per request at most (413 beyond).
    """
    body = _object(body)
    unknown = sorted(set(body) - set(SCORE_FIELDS))
    if unknown:
        raise RequestError(
            422,
            unknown[0],
            f"unknown field(s) {', '.join(map(repr, unknown))}; valid fields: "
            f"{', '.join(SCORE_FIELDS)}",
        )
    for name in ("prompts", "responses"):
        if name not in body:
            raise RequestError(422, name, f"missing field {name!r}")
    responses = body["responses"]
    if isinstance(responses, str):
        responses = [responses]
    if not isinstance(responses, list):
        raise RequestError(
            422, "responses", f"responses must be an array of texts, got {_kind(responses)}"
        )
    _check_rows("responses", len(responses), max_rows)
    for i, response in enumerate(responses):
        _check_text(f"responses[{i}]", response)
    prompts = body["prompts"]
    if isinstance(prompts, str) or _is_chat(prompts):  # one prompt for every response
        _check_text("prompts", prompts)
        names = ["prompts"] * len(responses)
        prompts = [prompts] * len(responses)
    elif isinstance(prompts, list):
        if len(prompts) != len(responses):
            raise RequestError(
                422,
                "prompts",
                f"prompts has {len(prompts)} items and responses {len(responses)}: send one "
                "prompt per response, or a single prompt for all of them",
            )
        names = [f"prompts[{i}]" for i in range(len(prompts))]
        for name, prompt in zip(names, prompts, strict=True):
            _check_text(name, prompt)
    else:
        raise RequestError(
            422, "prompts", f"prompts must be a string or an array, got {_kind(prompts)}"
        )
    for i, (name, prompt, response) in enumerate(zip(names, prompts, responses, strict=True)):
        if isinstance(prompt, str) != isinstance(response, str):
            kinds = [
                "a string" if isinstance(t, str) else "a message list" for t in (prompt, response)
            ]
            raise RequestError(
                422,
                f"responses[{i}]",
                f"responses[{i}] is {kinds[1]} but {name} is {kinds[0]}: a row's prompt and "
                "response must both be strings or both message lists",
            )
    changes = {key: body[key] for key in ("lam", "k", "beta") if key in body}
    if "objective" in body:
        name = body["objective"]
        if not isinstance(name, str):
            raise RequestError(422, "objective", f"objective must be a string, got {_kind(name)}")
        changes["name"] = name
    objective = replace(default, **changes) if changes else default
    samples = body.get("samples", False)
    if not isinstance(samples, bool):
        raise RequestError(422, "samples", f"samples must be true or false, got {samples!r}")
    return ScoreRequest(prompts, list(responses), objective, samples)


# -- POST /get_reward (OpenRLHF) ------------------------------------------------------


def _strings(field: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RequestError(422, field, f"{field} must be an array of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(
                422, f"{field}[{i}]", f"{field}[{i}] must be a string, got {_kind(item)}"
            )
    return value


def _strip_suffixes(text: str, suffixes: Sequence[str]) -> str:
    """``text`` without trailing padding / end-of-sequence tokens (the model adds its own)."""
    suffixes = [s for s in suffixes if s]
    changed = True
    while changed:
        changed = False
        for s in suffixes:
            if text.endswith(s):
                text, changed = text[: -len(s)], True
    return text


def parse_get_reward(
    body: Any, *, max_rows: int, strip_tokens: Sequence[str] = ()
) -> RewardRequest:
    """Check an OpenRLHF ``POST /get_reward`` body and split each query.

    ``query[i]`` is the prompt and the response as one text. With ``prompts`` the
    response is what follows ``prompts[i]`` in it (the prompt may follow a
    beginning-of-sequence token); without them the whole query is scored as the
    response to an empty prompt. Trailing ``strip_tokens`` (the model's padding and
    end-of-sequence tokens) are cut from each response.
    """
    body = _object(body)
    if "query" not in body:
        raise RequestError(422, "query", "missing field 'query' (prompt + response texts)")
    queries = _strings("query", body["query"])
    _check_rows("query", len(queries), max_rows)
    prompts = body.get("prompts")
    if prompts is None:
        split = [("", q) for q in queries]
    else:
        prompts = _strings("prompts", prompts)
        if len(prompts) != len(queries):
            raise RequestError(
                422,
                "prompts",
                f"prompts has {len(prompts)} items and query {len(queries)}: send one prompt "
                "per query (or none)",
            )
        split = []
        for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
            at = query.find(prompt) if prompt else 0
            if at < 0:
                raise RequestError(
                    422,
                    f"prompts[{i}]",
                    f"prompts[{i}] does not occur in query[{i}], so the response cannot be "
                    "split off; send the prompt text exactly as it starts the query (or no "
                    "prompts to score the whole query)",
                )
            split.append((prompt, query[at + len(prompt) :]))
    return RewardRequest(
        [p for p, _ in split], [_strip_suffixes(r, strip_tokens) for _, r in split]
    )
