"""The wire shapes: what each route accepts and answers, as the trainers' own clients send and read them.

* ``POST /get_reward`` (OpenRLHF ``--reward.remote_url``): ``{"query": [text, ...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards": [r, ...], "scores": [r, ...], "extra_logs": {}}``, same length and order
  as ``query``. ``prompts`` and ``labels`` are accepted and ignored (the query is already prompt + response).
  An empty ``query`` is answered with empty lists: OpenRLHF's client shards one sample over every replica of
  its comma-separated list, so all replicas but the first receive ``"query": []`` and fail the sample if that
  is an error.
* ``POST /classify`` (vLLM's classification API, as verl's reward loop calls it): ``{"model": ..., "input":
  text | [text, ...], "activation" | "use_activation": bool}`` -> ``{"id", "object": "list", "created",
  "model", "data": [{"index", "label", "probs": [x], "num_classes": 1}], "usage": {...}}``. Without an
  activation flag the raw score is returned (a reward); ``true`` applies a sigmoid.
* ``POST /score`` (vhtool's own): ``{"records": [record, ...], "per_token": bool}`` or one record, where a
  record is what a ``vhtool score`` JSONL line holds (``text``, ``prompt`` + ``completion``, ``input_ids``) ->
  ``{"records": [...]}``, the objects ``vhtool score`` prints (``index``, ``score``, ``tokens``, ``truncated``,
  ``values``).

Every error is one JSON object ``{"error": {"type", "message"}}``. JSON has no NaN: a non-finite score is ``null``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from vhtool.models.scoring.results import ScoredRecord


class WireError(Exception):
    """A request that is answered with an error status and ``{"error": {"type", "message"}}``."""

    def __init__(self, status: int, kind: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = dict(headers or {})

    def to_json(self) -> dict[str, Any]:
        return error_json(self.kind, self.message)


def error_json(kind: str, message: str) -> dict[str, Any]:
    """The one error object every failed request gets."""
    return {"error": {"type": kind, "message": message}}


@dataclass(frozen=True)
class Parsed:
    """A request's texts (or records), in order, and what the route's answer needs."""

    payloads: list[Any]
    model: str | None = None
    activation: bool = False
    per_token: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextResult:
    """One text's answer: its score, token count, truncation flag, and per-token values when asked."""

    score: float
    tokens: int
    truncated: bool = False
    values: tuple[float, ...] | None = None


def parse_json(body: bytes) -> Any:
    """The request body as JSON.

    Raises:
        WireError: 400 when the body is not UTF-8 or not JSON.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(400, "invalid_json", f"the body is not UTF-8 ({exc.reason} at byte {exc.start}).") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WireError(400, "invalid_json", f"the body is not valid JSON ({exc}).") from None


def _object(doc: Any, route: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise WireError(400, "invalid_request", f"{route} expects a JSON object, got {_kind(doc)}.")
    return doc


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _texts(value: Any, name: str, *, allow_empty: bool = False) -> list[str]:
    """A string or a list of strings, as a list."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise WireError(400, "invalid_request", f"{name} must be a string or an array of strings, got {_kind(value)}.")
    for k, t in enumerate(value):
        if not isinstance(t, str):
            raise WireError(400, "invalid_request", f"{name}[{k}] must be a string, got {_kind(t)}.")
    if not value and not allow_empty:
        raise WireError(400, "invalid_request", f"{name} is empty; give at least one text.")
    return list(value)


def parse_get_reward(doc: Any) -> Parsed:
    """OpenRLHF's request: ``query`` (texts); ``prompts`` and ``labels`` accepted and ignored."""
    body = _object(doc, "/get_reward")
    if "query" not in body:
        raise WireError(400, "invalid_request", '/get_reward needs "query": an array of texts (prompt + response).')
    return Parsed(payloads=list(_texts(body["query"], "query", allow_empty=True)))


def parse_classify(doc: Any) -> Parsed:
    """vLLM's classification request: ``input`` (a text or texts), ``model``, ``activation``/``use_activation``."""
    body = _object(doc, "/classify")
    if "input" not in body:
        hint = " (the chat form, messages, is not served: apply the chat template first)" if "messages" in body else ""
        raise WireError(400, "invalid_request", f'/classify needs "input": a text or an array of texts{hint}.')
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise WireError(400, "invalid_request", f"model must be a string, got {_kind(model)}.")
    activation = False
    for name in ("activation", "use_activation"):  # vLLM renamed it in 0.11.2; the newer spelling wins
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise WireError(400, "invalid_request", f"{name} must be true or false, got {_kind(value)}.")
        activation = value
    return Parsed(payloads=list(_texts(body["input"], "input")), model=model, activation=activation)


def parse_score(doc: Any) -> Parsed:
    """vhtool's request: ``{"records": [...], "per_token": bool}`` or one record (``text`` / ``prompt`` +
    ``completion`` / ``input_ids``); each record is checked by the scoring engine, as ``vhtool score`` does."""
    body = _object(doc, "/score")
    per_token = body.get("per_token", False)
    if not isinstance(per_token, bool):
        raise WireError(400, "invalid_request", f"per_token must be true or false, got {_kind(per_token)}.")
    if "records" not in body:
        record = {k: v for k, v in body.items() if k != "per_token"}
        return Parsed(payloads=[record], per_token=per_token)
    records = body["records"]
    if not isinstance(records, list):
        raise WireError(400, "invalid_request", f"records must be an array of objects, got {_kind(records)}.")
    if not records:
        raise WireError(400, "invalid_request", "records is empty; give at least one record.")
    for k, r in enumerate(records):
        if not isinstance(r, dict):
            raise WireError(400, "invalid_request", f"records[{k}] must be an object, got {_kind(r)}.")
    return Parsed(payloads=list(records), per_token=per_token)


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def get_reward_response(results: list[TextResult]) -> dict[str, Any]:
    """OpenRLHF's answer: ``rewards`` and ``scores`` (the same numbers), ``extra_logs`` (none)."""
    scores = [_number(r.score) for r in results]
    return {"rewards": scores, "scores": list(scores), "extra_logs": {}}


def classify_response(results: list[TextResult], *, model: str, activation: bool) -> dict[str, Any]:
    """vLLM's ``ClassificationResponse`` for a one-label model: ``probs`` holds the (raw or sigmoid) score."""
    data = []
    for k, r in enumerate(results):
        x = _sigmoid(r.score) if activation else r.score
        data.append({"index": k, "label": "LABEL_0", "probs": [_number(x)], "num_classes": 1})
    tokens = sum(r.tokens for r in results)
    return {
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }


def score_response(results: list[TextResult], *, per_token: bool) -> dict[str, Any]:
    """vhtool's answer: the records ``vhtool score`` prints, ``index`` being the position in the request."""
    records = [
        ScoredRecord(
            index=k,
            score=r.score,
            tokens=r.tokens,
            truncated=r.truncated,
            values=r.values if per_token else None,
        ).to_json()
        for k, r in enumerate(results)
    ]
    return {"records": records}


def _sigmoid(x: float) -> float:
    if not math.isfinite(x):
        return x if math.isnan(x) else (1.0 if x > 0 else 0.0)
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact JSON bytes (non-finite numbers were made ``null`` above; anything else left is a bug)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode("utf-8")


__all__ = [
    "Parsed",
    "TextResult",
    "WireError",
    "classify_response",
    "dumps",
    "error_json",
    "get_reward_response",
    "parse_classify",
    "parse_get_reward",
    "parse_json",
    "parse_score",
    "score_response",
]
