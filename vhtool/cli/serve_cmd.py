"""``vhtool serve``: the scoring engine over HTTP for OpenRLHF, verl and vhtool's own clients."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vhtool.choices import JOIN_MODES
from vhtool.cli.common import (
    AllowMissingOpt,
    Choice,
    JsonOpt,
    Out,
    QuietOpt,
    choice_enum,
    examples,
    handle_errors,
    write_json,
)
from vhtool.cli.score_cmd import (  # score's model options, declared once, and their one translation
    AllowPickleOpt,
    Device,
    DeviceMapOpt,
    DeviceOpt,
    DType,
    DTypeOpt,
    HeadOpt,
    MaxMemoryOpt,
    NoNormalizeOpt,
    OffloadFolderOpt,
    ReadoutOpt,
    score_options,
)

if TYPE_CHECKING:
    Join = Choice
    OnOverlong = Choice
    LogFormat = Choice
else:
    Join = choice_enum("Join", JOIN_MODES)
    # kept here (not imported from vhtool.serve) so that `vhtool --help` does not import the serve room
    OnOverlong = choice_enum("OnOverlong", ("truncate", "reject"))
    LogFormat = choice_enum("LogFormat", ("text", "json"))

EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2 -o policy",
    "vhtool serve policy --port 0 --json > ready.json & \\",
    "  until [ -s ready.json ] || ! kill -0 $!; do sleep 0.1; done; \\",
    "  cat ready.json; kill $! && wait $!",
)


class _JsonLines(logging.Formatter):
    """One JSON object a line: time, level, and the access fields (route, method, texts, status, ms) or message."""

    FIELDS = ("route", "method", "texts", "status", "ms")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        fields = {k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)}
        if fields:
            doc.update(fields)
        else:
            doc["message"] = record.getMessage()
        return json.dumps(doc)


def _setup_logging(log_format: str, quiet: bool) -> None:
    """vhtool.serve's access lines and errors to stderr (never the key, never the texts)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("vhtool.serve")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


@handle_errors
def serve_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT",
            help="What `vhtool score` accepts: value-head checkpoint, reward adapter, seq-cls reward model, "
            "token-cls critic; local directory, Hub id or builtin:*.",
            show_default=False,
        ),
    ],
    host: Annotated[
        str,
        typer.Option("--host", metavar="HOST", help="Address to bind (0.0.0.0: every interface; needs --api-key)."),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", min=0, max=65535, metavar="PORT", help="TCP port (0: a free one, reported when ready)."
        ),
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="VHTOOL_API_KEY",
            metavar="KEY",
            help="Require 'Authorization: Bearer KEY' on every route but /health (prefer VHTOOL_API_KEY: a flag "
            "shows in the process list).",
            show_default=False,
            show_envvar=True,
        ),
    ] = None,
    head: HeadOpt = None,
    dtype: DTypeOpt = DType("float32"),
    device: DeviceOpt = Device("auto"),
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    readout: ReadoutOpt = None,
    no_normalize: NoNormalizeOpt = False,
    allow_pickle: AllowPickleOpt = False,
    allow_missing: AllowMissingOpt = False,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            min=1,
            metavar="N",
            help="Texts longer than N tokens: see --on-overlong.",
            show_default=False,
        ),
    ] = None,
    on_overlong: Annotated[
        OnOverlong,
        typer.Option("--on-overlong", help="Over --max-length: truncate (flagged, as score) or reject (400)."),
    ] = OnOverlong("truncate"),
    join: Annotated[
        Join | None,
        typer.Option(
            "--join", help="/score prompt+completion records: chat template or concatenation.", show_default=False
        ),
    ] = None,
    max_batch_tokens: Annotated[
        int, typer.Option("--max-batch-tokens", min=1, metavar="N", help="At most N padded tokens per forward.")
    ] = 16384,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=1, metavar="N", help="At most N texts per forward.")
    ] = 64,
    max_wait_ms: Annotated[
        float,
        typer.Option("--max-wait-ms", min=0, metavar="MS", help="Wait up to MS for a batch to fill (0: never wait)."),
    ] = 0.0,
    max_queued_texts: Annotated[
        int,
        typer.Option(
            "--max-queued-texts", min=1, metavar="N", help="Texts waiting at most; over it: 503 + Retry-After."
        ),
    ] = 4096,
    max_request_bytes: Annotated[
        int, typer.Option("--max-request-bytes", min=1, metavar="N", help="Larger bodies: 413.")
    ] = 16 * 1024 * 1024,
    max_texts_per_request: Annotated[
        int, typer.Option("--max-texts-per-request", min=1, metavar="N", help="More texts in one request: 413.")
    ] = 1024,
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout", min=0, metavar="SECONDS", help="On SIGTERM/Ctrl-C: time to answer requests in flight."
        ),
    ] = 30.0,
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", help="Access lines on stderr: text or json (one object a line).")
    ] = LogFormat("text"),
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Serve rewards and values over HTTP: OpenRLHF's /get_reward, vLLM's /classify (verl), vhtool's /score.

    Every text of every request is one queue entry; one model worker batches them by length, as `vhtool score`
    does, so a text's score equals `vhtool score`'s whatever it is batched with. Also GET /health, /info and
    /metrics (Prometheus). When ready it prints the URL and routes on stderr; with --json, one JSON line with
    the bound address on stdout (so --port 0 can be used from scripts). SIGTERM or Ctrl-C: stop accepting,
    answer the requests already received (up to --drain-timeout), exit 0. See docs/serve.md.
    """
    from vhtool.serve.options import ServeOptions
    from vhtool.serve.server import Ready, serve

    out = Out(json_mode=json_out, quiet=quiet)
    model_options = score_options(
        head=head,
        max_length=max_length,
        join=join,
        dtype=dtype,
        device=device,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
        readout=readout,
        no_normalize=no_normalize,
        allow_pickle=allow_pickle,
        allow_missing=allow_missing,
        per_token=True,  # /score may ask for per-token values; the other routes ignore them
        max_batch_tokens=max_batch_tokens,
        batch_size=max_batch_size,
    )
    options = ServeOptions(
        host=host,
        port=port,
        api_key=api_key or None,
        max_queued_texts=max_queued_texts,
        max_request_bytes=max_request_bytes,
        max_texts_per_request=max_texts_per_request,
        on_overlong=on_overlong.value,
        max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        drain_timeout=drain_timeout,
        log_format=log_format.value,
    )
    _setup_logging(options.log_format, quiet)
    if not options.loopback and options.api_key is None:
        out.warn(
            f"--host {host} accepts connections from other machines and no --api-key is set: anyone who can "
            "reach this port can use the model."
        )

    def ready(r: Ready) -> None:
        for note in r.notes:
            out.warn(note)
        if json_out:
            write_json(r.to_json())
        if not quiet:
            from rich.markup import escape

            out.err.print(
                f"Serving {escape(r.checkpoint)} ({r.head} head, {r.dtype} on {r.device}) at {r.url}\n"
                f"  routes: POST /get_reward /classify /score, GET /health /info /metrics"
                + ("\n  API key required (Authorization: Bearer ...)" if options.api_key else "")
                + "\n  Ctrl-C or SIGTERM stops: requests in flight are answered first."
            )

    def phase(name: str) -> None:
        if name == "loading the model" and not (quiet or json_out):
            out.info(f"Loading {checkpoint} ...")

    unanswered = serve(checkpoint, score_options=model_options, options=options, on_ready=ready, on_phase=phase)
    if unanswered:
        out.warn(f"--drain-timeout {drain_timeout:g} s ran out: {unanswered} queued texts were not scored.")
    if not quiet:
        out.info("Stopped.")
