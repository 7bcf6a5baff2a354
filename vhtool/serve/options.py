"""What ``vhtool serve`` is asked to do beyond scoring: :class:`ServeOptions`, validated on construction."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vhtool.errors import InputError

ON_OVERLONG = ("truncate", "reject")
LOG_FORMATS = ("text", "json")

DEFAULT_MAX_QUEUED_TEXTS = 4096
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_TEXTS_PER_REQUEST = 1024
DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServeOptions:
    """The server's address, limits and behaviour. Bad values raise :class:`InputError`.

    Attributes:
        host: address to bind (``127.0.0.1``: loopback only).
        port: TCP port; 0 asks the OS for a free one (the bound address is reported when ready).
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_queued_texts: texts admitted and not yet answered, over all requests; a request that would go over
            it gets 503 with ``Retry-After`` (never an unbounded backlog).
        max_request_bytes: a larger body gets 413.
        max_texts_per_request: a request with more texts gets 413.
        on_overlong: ``truncate`` (to ``--max-length``, flagged, as ``vhtool score``) or ``reject`` (400).
        max_batch_tokens: padded tokens per forward (``records x longest``).
        max_batch_size: texts per forward.
        max_wait_ms: how long the model worker may wait for a batch to fill (0: never waits).
        drain_timeout: on SIGTERM/SIGINT, seconds to answer the requests already received before giving up.
        log_format: ``text`` or ``json`` access lines (one per request: route, texts, status, milliseconds).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_queued_texts: int = DEFAULT_MAX_QUEUED_TEXTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_texts_per_request: int = DEFAULT_MAX_TEXTS_PER_REQUEST
    on_overlong: str = "truncate"
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = 0.0
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be between 0 and 65535, got {self.port}.")
        for name, value in (
            ("max-queued-texts", self.max_queued_texts),
            ("max-request-bytes", self.max_request_bytes),
            ("max-texts-per-request", self.max_texts_per_request),
            ("max-batch-tokens", self.max_batch_tokens),
            ("max-batch-size", self.max_batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"--{name} must be a positive integer, got {value!r}.")
        if self.max_texts_per_request > self.max_queued_texts:
            raise InputError(
                f"--max-texts-per-request ({self.max_texts_per_request}) is more than --max-queued-texts "
                f"({self.max_queued_texts}): such a request could never be admitted."
            )
        if self.max_wait_ms < 0 or self.drain_timeout < 0:
            raise InputError("--max-wait-ms and --drain-timeout must not be negative.")
        if self.on_overlong not in ON_OVERLONG:
            raise InputError(f"--on-overlong must be one of {', '.join(ON_OVERLONG)}, got {self.on_overlong!r}.")
        if self.log_format not in LOG_FORMATS:
            raise InputError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}.")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("--api-key is empty.")

    @property
    def loopback(self) -> bool:
        """True when ``host`` only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


__all__ = ["LOG_FORMATS", "ON_OVERLONG", "ServeOptions"]
