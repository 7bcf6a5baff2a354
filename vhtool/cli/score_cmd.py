"""``vhtool score``: score a data set with the value head or the reward adapter, fast and in input order."""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vhtool.choices import DEVICE_MAPS, DEVICES, DTYPES, FORMATS, HEADS, JOIN_MODES, ON_ERROR, READOUTS
from vhtool.cli.common import (
    AllowMissingOpt,
    Choice,
    ForceOpt,
    JsonOpt,
    Out,
    QuietOpt,
    choice_enum,
    examples,
    handle_errors,
)
from vhtool.errors import InputError, VhtoolError

if TYPE_CHECKING:
    from vhtool.models.scoring.options import ScoreOptions

    Head = Choice
    Join = Choice
    DType = Choice
    Device = Choice
    OnError = Choice
    InputFormat = Choice
    DeviceMap = Choice
    ReadoutRule = Choice
else:
    Head = choice_enum("Head", HEADS)
    Join = choice_enum("Join", JOIN_MODES)
    DType = choice_enum("DType", DTYPES)
    Device = choice_enum("Device", DEVICES)
    OnError = choice_enum("OnError", ON_ERROR)
    InputFormat = choice_enum("InputFormat", FORMATS)
    DeviceMap = choice_enum("DeviceMap", DEVICE_MAPS)
    ReadoutRule = choice_enum("ReadoutRule", READOUTS)

# ---------------------------------------------------------------------------------------- the model options
# Declared once, here: `vhtool evaluate` runs the same engine and takes the same model options (same names,
# choices and help), so a new model option of `score` is one alias that both signatures name.
HeadOpt = Annotated[
    Head | None,
    typer.Option(
        "--head",
        help="The reward adapter's score or the value head's. Default: reward when an adapter is attached, "
        "else value.",
        show_default=False,
    ),
]
MaxBatchTokensOpt = Annotated[
    int, typer.Option("--max-batch-tokens", min=1, metavar="N", help="At most N padded tokens per batch.")
]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Compute dtype (auto: the checkpoint's).")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to compute (auto: cuda if available).")]
OnErrorOpt = Annotated[
    OnError, typer.Option("--on-error", help="fail (exit 2 at the first bad record) or skip (warn, go on).")
]
DeviceMapOpt = Annotated[
    DeviceMap | None,
    typer.Option(
        "--device-map",
        help=(
            "Big-model loading (accelerate): the model is split over the GPUs and offloaded to CPU/disk "
            "as needed; --device is then ignored."
        ),
        show_default=False,
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="CAPS",
        help='With --device-map: a cap per device, e.g. cpu=200MB,0=20GiB or {"cpu": "200MB", "0": "20GiB"}.',
        show_default=False,
    ),
]
OffloadFolderOpt = Annotated[
    str | None,
    typer.Option(
        "--offload-folder",
        metavar="DIR",
        help="With --device-map: where weights offloaded to disk go.",
        show_default=False,
    ),
]
ReadoutOpt = Annotated[
    ReadoutRule | None,
    typer.Option(
        "--readout",
        help=(
            "Which token a sequence's score is read at: last, last-non-pad (transformers' classifiers), eos "
            "(the sequence ends with EOS, OpenRLHF), before-eos (DeepSpeed-Chat, trlx's RM). Default: the rule "
            "vhtool.json records, else the checkpoint convention's (docs/conventions.md)."
        ),
        show_default=False,
    ),
]
NoNormalizeOpt = Annotated[
    bool,
    typer.Option("--no-normalize", help="Skip the normalisation the checkpoint records (OpenRLHF mean/std)."),
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Read a framework's pytorch_model.bin (DeepSpeed-Chat, trlx) with torch's weights-only loader.",
    ),
]
DistTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--dist-timeout",
        metavar="SECONDS",
        help="Under torchrun/accelerate launch: seconds a rank waits for the others before the run fails.",
    ),
]


def score_options(*, no_normalize: bool = False, **parsed: Any) -> ScoreOptions:
    """The engine's options from the parsed model options of `score`, `evaluate` and `serve`, one translation:
    a choice becomes its value, `--no-normalize` becomes ``normalize=False``."""
    from vhtool.models.scoring.options import ScoreOptions

    values = {k: v.value if isinstance(v, enum.Enum) else v for k, v in parsed.items()}
    return ScoreOptions(normalize=not no_normalize, **values)


EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2 -o policy",
    "vhtool score policy --text 'Hello there.' --text 'Good night.' --json",
    "printf 'first\\nsecond\\n' | vhtool score policy -i - -o out.jsonl",
    """echo '{"prompt": "Hi.", "completion": " Yo!"}' | vhtool score policy -i -""",
)


#: Library notices the scoring engine passes on as notes (it records every warning of the model load); only
#: vhtool's own notes are for the user, the rest shows with --debug.
class _Display:
    """What ``score`` shows on a terminal while it runs: the phase, then records done of the total, records/s,
    tokens/s and the time left. Off a terminal (or with --json/--quiet) every method does nothing."""

    def __init__(self, out: Out, total: int | None) -> None:
        self.out = out
        self.total = total
        self.bar: Any = None
        self.task: Any = None
        self.tokens = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> _Display:
        if self.out.show_progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("records"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=self.out.err,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("resolving", total=None, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def phase(self, name: str) -> None:
        if self.bar is not None:
            total = self.total if name == "scoring" else None
            if name == "scoring":
                self.t0 = time.perf_counter()
            self.bar.update(self.task, description=name, total=total)

    def advance(self, records: int, tokens: int) -> None:
        if self.bar is not None:
            self.tokens += tokens
            self.bar.advance(self.task, records)
            seconds = max(time.perf_counter() - self.t0, 1e-9)
            done = self.bar.tasks[0].completed
            self.bar.update(self.task, rate=f"{done / seconds:,.1f} records/s, {self.tokens / seconds:,.0f} tokens/s")


def _histogram_rows(summary: Any, width: int = 30) -> list[tuple[str, str]]:
    """The summary's histogram as table rows: a range and a bar of ``█`` proportional to its count."""
    bins = summary.histogram
    if not bins:
        return []
    peak = max(c for _, _, c in bins) or 1
    rows = []
    for i, (lo, hi, count) in enumerate(bins):
        bar = "█" * max(1 if count else 0, round(width * count / peak))
        rows.append(("histogram" if i == 0 else "", f"[{lo:>9.4g}, {hi:>9.4g})  {bar} {count}"))
    return rows


def _summary_table(out: Out, summary: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.6g}"

    table = Table(title="vhtool score", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("records", f"{summary.count}" + (f" ({summary.skipped} skipped)" if summary.skipped else "")),
        ("mean", num(summary.mean)),
        ("std", num(summary.std)),
        ("min", num(summary.min)),
        ("max", num(summary.max)),
        ("NaN / inf", f"{summary.nan_count} / {summary.inf_count}"),
        ("tokens", f"{summary.tokens} ({summary.padding_fraction:.1%} padding, {summary.truncated} truncated)"),
        ("speed", f"{summary.tokens_per_s:,.0f} tokens/s, {summary.records_per_s:,.1f} records/s"),
        ("time", f"{summary.seconds:.2f} s scoring + {summary.load_seconds:.2f} s loading"),
        ("head", f"{summary.head} ({summary.head_reason})"),
        ("join", f"{summary.join} ({summary.joined_records} prompt+completion records)"),
        ("input", summary.input_format),
        ("compute", f"{summary.dtype} on {summary.device}, {summary.padding_side} padding, {summary.forward} forward"),
    ]
    if summary.ranks > 1:
        rows.append(("ranks", f"{summary.ranks} (batches shared round-robin; speed is over all ranks)"))
    if summary.output:
        rows.append(("output", summary.output))
    rows.extend(_histogram_rows(summary))  # the table is drawn on a terminal only; --json has the same numbers
    for k, v in rows:
        table.add_row(k, escape(str(v)))
    out.err.print(table)


@handle_errors
def score_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Value-head checkpoint: local directory, Hub id or builtin:*.",
            show_default=False,
        ),
    ],
    input_file: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            metavar="FILE",
            help=(
                "JSONL (text | prompt+completion | input_ids per line) or plain text (one sample a line); "
                "'-' reads stdin. .jsonl/.json/.ndjson is JSONL, .txt plain text, else the first line decides."
            ),
            show_default=False,
        ),
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option("--text", metavar="TEXT", help="A text to score (repeatable).", show_default=False),
    ] = None,
    head: HeadOpt = None,
    per_token: Annotated[bool, typer.Option("--per-token", help="Also emit the head's value at every token.")] = False,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, metavar="N", help="At most N records per batch.", show_default=False),
    ] = None,
    max_batch_tokens: MaxBatchTokensOpt = 16384,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            min=1,
            metavar="N",
            help="Truncate longer records to N tokens (flagged).",
            show_default=False,
        ),
    ] = None,
    join: Annotated[
        Join | None,
        typer.Option(
            "--join",
            help="How prompt+completion records are joined: with the tokenizer's chat template, or concatenated. "
            "Default: chat if the tokenizer has a template.",
            show_default=False,
        ),
    ] = None,
    dtype: DTypeOpt = DType("float32"),
    device: DeviceOpt = Device("auto"),
    on_error: OnErrorOpt = OnError("fail"),
    input_format: Annotated[
        InputFormat, typer.Option("--format", help="Input format (auto: from the suffix, else the first line).")
    ] = InputFormat("auto"),
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    readout: ReadoutOpt = None,
    no_normalize: NoNormalizeOpt = False,
    allow_pickle: AllowPickleOpt = False,
    dist_timeout: DistTimeoutOpt = 1800.0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write the records (JSONL) to FILE, not stdout.", show_default=False
        ),
    ] = None,
    allow_missing: AllowMissingOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score records with the value head (at the last token) or the reward adapter; JSONL out, in input order.

    Records go to stdout (or -o FILE) as {"index", "score", "tokens"} lines, plus "truncated" when
    --max-length cut the record and "values" with --per-token; a summary table goes to stderr on a
    terminal. With --json,
    stdout gets one object {"summary", "records", "skipped"} ("records" only without -o).

    With --on-error fail, a bad record stops the run with exit 2 and names its line. An -o FILE is written
    to a temporary sibling and renamed at the end, so it appears complete or not at all. On stdout, a
    file input is read and tokenised in full first, so nothing is printed when any record is bad; stdin
    is read once, window by window (4096 records): records of earlier windows may already be printed.

    Under `torchrun --nproc-per-node K -m vhtool score ...` (or `accelerate launch -m vhtool score ...`) the
    K ranks share the planned batches; rank 0 writes the one output, byte-identical to a single process's.
    """
    from vhtool.models.scoring.distributed import score_dataset_distributed
    from vhtool.models.scoring.inputs import InputSpec
    from vhtool.models.scoring.ranks import detect_distributed
    from vhtool.models.scoring.results import ScoredRecord, ScoreSummary, SkippedRecord
    from vhtool.models.scoring.run import score_dataset

    env = detect_distributed()
    worker = env is not None and env.rank != 0  # ranks other than 0 print nothing: rank 0 speaks for the job
    out = Out(json_mode=json_out, quiet=quiet or worker)
    options = score_options(
        head=head,
        per_token=per_token,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
        join=join,
        dtype=dtype,
        device=device,
        on_error=on_error,
        input_format=input_format,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
        allow_missing=allow_missing,
        readout=readout,
        no_normalize=no_normalize,
        allow_pickle=allow_pickle,
    )
    if input_file is not None and text:
        raise InputError("give --input or --text, not both.")
    if input_file == "-":
        spec = InputSpec(stream=sys.stdin)
    elif input_file is not None:
        spec = InputSpec(path=Path(input_file))
    elif text:
        spec = InputSpec(texts=tuple(text))
    else:
        raise InputError("nothing to score: give --input FILE, --input - (stdin), or --text TEXT.")

    # Everything the files can tell is told now, before torch and the model load (seconds): the records' shape,
    # an empty input, an encoder-decoder, a missing head. Every rank checks the same files.
    from vhtool.checkpoint.atomic import AtomicFile
    from vhtool.models.scoring.precheck import precheck_score
    from vhtool.models.scoring.run import check_output

    try:
        if output is not None and not worker:  # the output first, as every writing command does; rank 0 writes
            AtomicFile(check_output(output, force=force, inputs=spec, checkpoint=checkpoint)).discard()
        checked = precheck_score(checkpoint, spec, options)
    except VhtoolError as exc:
        if worker:  # every rank finds the same; rank 0 prints it
            raise typer.Exit(exc.exit_code) from None
        raise
    for note in checked.notes:
        out.warn(note)

    collected: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []

    def on_skip(rec: SkippedRecord) -> None:
        skipped.append({"index": rec.index, "line": rec.line, "reason": rec.reason})
        out.warn(f"{spec.where(rec.line)}: {rec.reason}; skipped.")

    def keep(rec: ScoredRecord) -> None:
        collected.append(rec.to_json())

    def emit(rec: ScoredRecord) -> None:
        sys.stdout.write(json.dumps(rec.to_json(), allow_nan=False) + "\n")

    on_record: Callable[[ScoredRecord], None] | None = None
    if output is None:
        on_record = keep if json_out else emit

    from vhtool.models.scoring.inputs import count_records

    total = count_records(spec, options.input_format) if out.show_progress else None
    try:
        with _Display(out, total) as display:
            common: dict[str, Any] = {
                "inputs": spec,
                "options": options,
                "output": output,
                "force": force,
                "on_record": on_record,
                "on_skip": on_skip,
                "progress": display.advance,
                "on_phase": display.phase,
                "validate_first": output is None and not json_out,
            }
            summary: ScoreSummary | None
            if env is None:
                summary = score_dataset(checkpoint, **common)
            else:
                summary = score_dataset_distributed(checkpoint, env=env, timeout_s=dist_timeout, **common)
        sys.stdout.flush()
    except VhtoolError as exc:
        if worker:  # the same error is raised on every rank; rank 0 prints it
            raise typer.Exit(exc.exit_code) from None
        raise
    except BrokenPipeError:  # e.g. `vhtool score ... | head`: the reader has gone, stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
    if summary is None:  # a rank other than 0: rank 0 reports for the job
        return
    for note in summary.notes:
        out.warn(note)
    if json_out:
        doc: dict[str, Any] = {"summary": summary.to_json()}
        if output is None:
            doc["records"] = collected
        doc["skipped"] = skipped
        out.data(doc)
        return
    if out.show_progress:  # a person at a terminal; a script reads --json (the README's rule)
        _summary_table(out, summary)
