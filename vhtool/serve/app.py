"""The HTTP application (Starlette): routes, admission, authentication, access lines and metrics.

A scoring request goes: API key -> body (bounded) -> JSON -> the route's shape (:mod:`.wire`) -> admission to the
bounded queue (503 + ``Retry-After`` when full) -> tokenisation on a worker pool (never on the event loop nor on
the model thread) -> one queue entry per text (:mod:`.batcher`) -> the answer in the route's shape. Once the
server drains (SIGTERM), a scoring request that arrives is refused with 503 ``shutting_down``. While it
waits, the request watches its connection: a client that goes away has its entries dropped before compute.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vhtool._version import __version__
from vhtool.models.scoring.engine import Scorer
from vhtool.models.scoring.inputs import InputItem
from vhtool.serve.batcher import Batcher, Entry
from vhtool.serve.metrics import Metrics
from vhtool.serve.options import ServeOptions
from vhtool.serve.wire import (
    Parsed,
    TextResult,
    WireError,
    classify_response,
    dumps,
    error_json,
    get_reward_response,
    parse_classify,
    parse_get_reward,
    parse_json,
    parse_score,
    score_response,
)

ACCESS_LOGGER = "vhtool.serve.access"
LOGGER = "vhtool.serve"
RETRY_AFTER_S = 1
ROUTES = ("/get_reward", "/classify", "/v1/classify", "/score", "/health", "/info", "/metrics")


@dataclass
class ServeState:
    """What the routes share: the loaded scorer, the queue, the metrics, the options, and whether draining."""

    scorer: Scorer
    batcher: Batcher
    metrics: Metrics
    options: ServeOptions
    info: dict[str, Any]
    tokenizer_pool: ThreadPoolExecutor
    draining: bool = False
    model_name: str = ""
    access: logging.Logger = field(default_factory=lambda: logging.getLogger(ACCESS_LOGGER))
    log: logging.Logger = field(default_factory=lambda: logging.getLogger(LOGGER))


def build_app(state: ServeState) -> Any:
    """The Starlette application serving ``state``'s scorer on the routes of :data:`ROUTES`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def respond(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        return Response(dumps(doc), status_code=status, media_type="application/json", headers=headers)

    def logged(
        route: str, handler: Callable[[Request], Any], *, open_route: bool = False, scoring: bool = False
    ) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            request.state.texts = 0  # set by a scoring handler once the body is parsed: counted whatever the status
            try:
                if not open_route:
                    _authorize(request, state.options.api_key)
                if scoring and state.draining:  # stop accepting: only requests received before SIGTERM are answered
                    raise WireError(
                        503,
                        "shutting_down",
                        "the server is shutting down; send the request to another replica.",
                        headers={"Retry-After": str(RETRY_AFTER_S)},
                    )
                response = await handler(request)
            except WireError as exc:
                response = respond(exc.status, exc.to_json(), exc.headers)
            except Exception as exc:  # a bug or a failed batch: one JSON 500, the server goes on
                state.log.error("%s failed: %s: %s", route, type(exc).__name__, exc)
                response = respond(500, error_json("internal_error", f"{type(exc).__name__}: {exc}"))
            texts: int = request.state.texts
            seconds = time.perf_counter() - t0
            state.metrics.request(route, response.status_code, texts, seconds)
            state.access.info(
                "%s %s %d texts %d %.1f ms",
                request.method,
                route,
                texts,
                response.status_code,
                seconds * 1000,
                extra={
                    "route": route,
                    "method": request.method,
                    "texts": texts,
                    "status": response.status_code,
                    "ms": round(seconds * 1000, 2),
                },
            )
            result: Response = response
            return result

        return endpoint

    async def get_reward(request: Request) -> Response:
        parsed = parse_get_reward(await _body_json(request, state.options.max_request_bytes))
        request.state.texts = len(parsed.payloads)
        if not parsed.payloads:  # OpenRLHF sends an empty shard to every replica but the first
            return respond(200, get_reward_response([]))
        results = await _score(state, request, parsed, "query")
        return respond(200, get_reward_response(results))

    async def classify(request: Request) -> Response:
        parsed = parse_classify(await _body_json(request, state.options.max_request_bytes))
        request.state.texts = len(parsed.payloads)
        results = await _score(state, request, parsed, "input")
        doc = classify_response(results, model=parsed.model or state.model_name, activation=parsed.activation)
        return respond(200, doc)

    async def score(request: Request) -> Response:
        parsed = parse_score(await _body_json(request, state.options.max_request_bytes))
        request.state.texts = len(parsed.payloads)
        results = await _score(state, request, parsed, "records")
        return respond(200, score_response(results, per_token=parsed.per_token))

    async def health(request: Request) -> Response:
        if state.draining:
            return respond(503, {"status": "draining"})
        return respond(200, {"status": "ok"})

    async def info(request: Request) -> Response:
        return respond(200, state.info)

    async def metrics(request: Request) -> Response:
        body, content_type = state.metrics.render()
        return Response(body, status_code=200, headers={"Content-Type": content_type})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        kind = "method_not_allowed" if status == 405 else "not_found"
        message = f"{request.method} {request.url.path}: " + (
            "method not allowed" if status == 405 else f"no such route; the routes are {', '.join(ROUTES)}"
        )
        state.metrics.request("other", status, 0, 0.0)
        return respond(status, error_json(kind, message))

    routes = [
        Route("/get_reward", logged("/get_reward", get_reward, scoring=True), methods=["POST"]),
        Route("/classify", logged("/classify", classify, scoring=True), methods=["POST"]),
        Route("/v1/classify", logged("/classify", classify, scoring=True), methods=["POST"]),
        Route("/score", logged("/score", score, scoring=True), methods=["POST"]),
        Route("/health", logged("/health", health, open_route=True), methods=["GET"]),
        Route("/info", logged("/info", info), methods=["GET"]),
        Route("/metrics", logged("/metrics", metrics), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


def _authorize(request: Any, api_key: str | None) -> None:
    """Raises 401 unless ``Authorization: Bearer <api_key>`` (compared in constant time) or no key is set."""
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise WireError(
            401,
            "unauthorized",
            "missing or wrong API key: send Authorization: Bearer <key>.",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _body_json(request: Any, limit: int) -> Any:
    """The body, read up to ``limit`` bytes (413 beyond), parsed as JSON (400 if it is not)."""
    declared = request.headers.get("content-length")
    too_big = WireError(413, "body_too_large", f"the body is over --max-request-bytes ({limit} bytes).")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


async def _score(state: ServeState, request: Any, parsed: Parsed, name: str) -> list[TextResult]:
    """Admits, tokenises and queues a request's texts, then waits for their scores (or the client leaving)."""
    options = state.options
    n = len(parsed.payloads)
    if n > options.max_texts_per_request:
        raise WireError(
            413,
            "too_many_texts",
            f"{n} texts in one request, more than --max-texts-per-request ({options.max_texts_per_request}).",
        )
    if not state.batcher.reserve(n):
        raise WireError(
            503,
            "overloaded",
            f"the queue is full ({state.batcher.reserved} of {options.max_queued_texts} texts waiting); retry later.",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    loop = asyncio.get_running_loop()
    queued = False
    try:
        items = [InputItem(k, k + 1, p) for k, p in enumerate(parsed.payloads)]
        prepared = await loop.run_in_executor(state.tokenizer_pool, state.scorer.prepare, items)
        for k, p in enumerate(prepared):
            if p.error is not None:
                kind = "text_too_long" if "positions" in p.error else "invalid_text"
                raise WireError(400, kind, f"{name}[{k}]: {p.error}.")
            if p.truncated and options.on_overlong == "reject":
                limit = state.scorer.options.max_length
                raise WireError(400, "text_too_long", f"{name}[{k}]: more than --max-length ({limit}) tokens.")
        futures: list[asyncio.Future[tuple[float, list[float] | None]]] = [loop.create_future() for _ in prepared]
        entries = [
            Entry(ids=list(p.ids or []), deliver=_deliverer(loop, fut), tag=k)
            for k, (p, fut) in enumerate(zip(prepared, futures))
        ]
        state.batcher.submit(entries)
        queued = True
        outcome = await _wait_or_leave(request, futures)
        if outcome is None:  # the client went away: its entries are dropped before compute
            state.batcher.cancel(entries)
            raise WireError(499, "client_closed", "the client closed the connection before the answer.")
        return [
            TextResult(
                score=score, tokens=len(p.ids or []), truncated=p.truncated, values=None if v is None else tuple(v)
            )
            for p, (score, v) in zip(prepared, outcome)
        ]
    finally:
        if not queued:
            state.batcher.release(n)


def _deliverer(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> Any:
    """The batcher's callback for one entry: hands its result (or error) to the event loop, thread-safely."""

    def resolve(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def deliver(entry: Entry, result: Any, error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(resolve, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    return deliver


async def _wait_or_leave(request: Any, futures: list[asyncio.Future[Any]]) -> list[Any] | None:
    """The futures' results in order, or ``None`` when the client disconnects first."""
    gathered: asyncio.Future[Any] = asyncio.gather(*futures)

    async def left() -> None:
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                return

    watcher: asyncio.Future[Any] = asyncio.ensure_future(left())
    try:
        done, _ = await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        gathered.cancel()
        raise
    finally:
        watcher.cancel()
    if gathered in done:
        return list(gathered.result())
    gathered.cancel()
    return None


def server_info(state_scorer: Scorer, options: ServeOptions, *, head_sha256: str | None) -> dict[str, Any]:
    """``GET /info``: what is served and under which limits."""
    s = state_scorer
    return {
        "checkpoint": s.checkpoint,
        "head": s.head,
        "head_reason": s.head_reason,
        "model_kind": s.classifier or "value-head",
        "head_sha256": head_sha256,
        "dtype": s.compute_dtype,
        "device": s.device,
        "padding_side": s.padding_side,
        "join": s.join,
        "forward": s.forward_kind,
        "max_length": s.options.max_length,
        "vhtool_version": __version__,
        "limits": {
            "max_batch_tokens": options.max_batch_tokens,
            "max_batch_size": options.max_batch_size,
            "max_queued_texts": options.max_queued_texts,
            "max_request_bytes": options.max_request_bytes,
            "max_texts_per_request": options.max_texts_per_request,
            "max_wait_ms": options.max_wait_ms,
            "on_overlong": options.on_overlong,
            "drain_timeout": options.drain_timeout,
        },
        "auth": options.api_key is not None,
        "routes": list(ROUTES),
    }


__all__ = ["ACCESS_LOGGER", "LOGGER", "ROUTES", "ServeState", "build_app", "server_info"]
