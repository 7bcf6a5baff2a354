"""Running the server: load the scorer, bind, serve on uvicorn, drain on SIGTERM/SIGINT, stop.

The model is loaded before the port is bound: a checkpoint that cannot be scored fails the command (exit 2)
before anything listens, and a client that connects early is refused rather than kept waiting.

Shutdown (SIGTERM or SIGINT): the listening socket is closed (no new connections; a scoring request arriving on
a connection already open gets 503 ``shutting_down``), ``/health`` answers 503, the batcher stops waiting for
batches to fill, every request already received is answered, and :func:`serve` returns normally (the command
exits 0). When ``drain_timeout`` seconds pass first, every request still waiting (queued, or in a forward that
has not finished) is answered 503 ``shutting_down`` and the server stops: the process exits within about
``drain_timeout`` + 1 s (the second lets those answers go out), whatever the model is doing. A second SIGINT
stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhtool.errors import InputError, OperationError
from vhtool.models.scoring.engine import Scorer
from vhtool.models.scoring.options import ScoreOptions
from vhtool.serve.app import RETRY_AFTER_S, ROUTES, ServeState, build_app, server_info
from vhtool.serve.batcher import Batcher
from vhtool.serve.metrics import Metrics
from vhtool.serve.options import ServeOptions
from vhtool.serve.wire import WireError

TOKENIZER_THREADS = 2


@dataclass(frozen=True)
class Ready:
    """What :func:`serve` reports once it listens: the bound address, its URL, the routes, and load notes."""

    host: str
    port: int
    url: str
    routes: tuple[str, ...]
    checkpoint: str
    head: str
    device: str
    dtype: str
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "routes": list(self.routes),
            "checkpoint": self.checkpoint,
            "head": self.head,
            "device": self.device,
            "dtype": self.dtype,
        }


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port).

    Raises:
        InputError: the address cannot be bound (in use, not an address of this machine).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port.") from None
    sock.set_inheritable(True)
    return sock


def head_sha256(checkpoint: str) -> str | None:
    """The sha256 that ``vhtool.json`` records for the file holding the value head, when there is one."""
    from vhtool.checkpoint.catalogue import MANIFEST_FILE
    from vhtool.checkpoint.manifest import read_manifest

    path = Path(checkpoint) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = read_manifest(path)
    except (OSError, InputError):
        return None
    head = manifest.value_head
    entry = manifest.files.get(head.file) if head is not None and head.file else None
    if entry is None and len(manifest.files) == 1:
        entry = next(iter(manifest.files.values()))
    return entry.sha256 if entry is not None else None


def serve(
    checkpoint: str,
    *,
    score_options: ScoreOptions,
    options: ServeOptions,
    on_ready: Callable[[Ready], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    scorer: Scorer | None = None,
) -> int:
    """Serves ``checkpoint``'s scores over HTTP until SIGTERM/SIGINT (then drains and returns).

    Args:
        checkpoint: what ``vhtool score`` accepts (value head, reward adapter, seq-cls reward model, token-cls
            critic; local directory, Hub id, ``builtin:*``).
        score_options: the model options (head, dtype, device, device map, max length, join).
        options: address, limits and behaviour (see :class:`ServeOptions`).
        on_ready: called once the server listens, with the bound address.
        on_phase: called as the run enters each phase (``loading the model``, ``serving``, ``draining``).
        scorer: an already loaded :class:`Scorer` (its options win over ``score_options``).

    Returns:
        How many queued texts were left unscored when the server stopped (0 unless ``drain_timeout`` ran out).

    Raises:
        InputError: the checkpoint cannot be scored as asked, or the address cannot be bound.
    """
    import uvicorn

    phase = on_phase or (lambda name: None)
    if scorer is None:
        phase("loading the model")
        scorer = Scorer(checkpoint, options=score_options)
    state_box: list[ServeState] = []
    batcher = Batcher(
        scorer.forward_batch,
        prepare=scorer.pad_batch,  # padding and tensors on the preparing thread, the forward alone on the model's
        max_batch_tokens=options.max_batch_tokens,
        max_batch_size=options.max_batch_size,
        max_queued=options.max_queued_texts,
        max_wait_s=options.max_wait_ms / 1000.0,
        on_batch=lambda stats: state_box[0].metrics.batch(stats),
        on_drop=lambda n: state_box[0].metrics.dropped.inc(n),
    )
    metrics = Metrics(queue_depth=lambda: batcher.reserved)
    pool = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="vhtool-serve-tokenize")
    state = ServeState(
        scorer=scorer,
        batcher=batcher,
        metrics=metrics,
        options=options,
        info=server_info(scorer, options, head_sha256=head_sha256(checkpoint)),
        tokenizer_pool=pool,
        model_name=checkpoint,
    )
    state_box.append(state)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    ready = Ready(
        host=host,
        port=port,
        url=f"http://{shown}:{port}",
        routes=ROUTES,
        checkpoint=checkpoint,
        head=scorer.head,
        device=scorer.device,
        dtype=scorer.compute_dtype,
        notes=tuple(scorer.notes),
    )
    config = uvicorn.Config(
        build_app(state),
        log_level="warning",
        access_log=False,
        lifespan="off",
        # the drain deadline is vhtool's (_Server.drain answers what is left at drain_timeout); uvicorn's own
        # deadline comes a second later, so those answers are written before it closes the connections
        timeout_graceful_shutdown=math.ceil(options.drain_timeout) + 1,
        timeout_keep_alive=5,
        log_config=None,
    )
    server = _Server(config, state=state, on_ready=lambda: (phase("serving"), on_ready(ready) if on_ready else None))
    batcher.start()
    left = []
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except OSError as exc:  # pragma: no cover - the event loop failed to start
        raise OperationError(f"the server failed: {exc}") from None
    finally:
        server.cancel_deadline()
        # every request has been answered (or abandoned at the deadline): a forward still running is not waited for
        left = batcher.stop(timeout=options.drain_timeout if server.abandoned is None else 0.5)
        for entry in left:
            entry.deliver(entry, None, OperationError("the server stopped before this text was scored."))
        pool.shutdown(wait=False, cancel_futures=True)
        sock.close()
    return (server.abandoned or 0) + sum(not e.cancelled for e in left)


class _Server:
    """uvicorn's server, with vhtool's signal handling: SIGTERM/SIGINT drain and return (exit 0), never re-raise."""

    def __init__(self, config: Any, *, state: ServeState, on_ready: Callable[[], Any]) -> None:
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # uvicorn re-raises the signal after a graceful shutdown (the process would die of SIGTERM);
                # a drained server is a clean exit here, so the handlers are installed and restored only.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig: int, frame: Any) -> None:
                outer._drain()
                super().handle_exit(sig, frame)

            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if not self.should_exit:
                    on_ready()

        self.state = state
        self.server = Server(config)
        self.abandoned: int | None = None  # texts answered 503 when the drain deadline passed (None: it did not)
        self._deadline: threading.Timer | None = None

    def _drain(self) -> None:
        if self.state.draining:
            return
        self.state.draining = True
        self.state.batcher.flush()
        self._deadline = threading.Timer(self.state.options.drain_timeout, self._give_up)
        self._deadline.daemon = True
        self._deadline.start()

    def _give_up(self) -> None:
        """The drain deadline: every request still waiting is answered 503, so uvicorn's shutdown can finish."""
        error = WireError(
            503,
            "shutting_down",
            "the server stopped (its --drain-timeout ran out) before this text was scored; send it again.",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
        self.abandoned = self.state.batcher.abandon(error)

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()

    async def serve(self, sockets: list[socket.socket]) -> None:
        await self.server.serve(sockets=sockets)


def env_api_key() -> str | None:
    """``VHTOOL_API_KEY`` from the environment (empty counts as unset)."""
    return os.environ.get("VHTOOL_API_KEY") or None


__all__ = ["Ready", "bind", "env_api_key", "head_sha256", "serve"]
