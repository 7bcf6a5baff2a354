"""``vhtool evaluate``: preference accuracy of a reward model or critic on TRL preference records, and a CI gate."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vhtool.choices import JOIN_MODES
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
from vhtool.cli.score_cmd import (
    AllowPickleOpt,
    Device,
    DeviceMapOpt,
    DeviceOpt,
    DistTimeoutOpt,
    DType,
    DTypeOpt,
    HeadOpt,
    MaxBatchTokensOpt,
    MaxMemoryOpt,
    NoNormalizeOpt,
    OffloadFolderOpt,
    OnError,
    OnErrorOpt,
    ReadoutOpt,
    _histogram_rows,
    score_options,
)
from vhtool.errors import InputError, VerificationError, VhtoolError

if TYPE_CHECKING:
    Join = Choice
else:
    Join = choice_enum("Join", JOIN_MODES)

EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2 -o policy",
    """echo '{"prompt": "Hi.", "chosen": " Hi!", "rejected": " Go."}' > pairs.jsonl""",
    "vhtool evaluate policy -i pairs.jsonl -o this.jsonl --require-accuracy 0",
    "vhtool evaluate policy -i pairs.jsonl --compare this.jsonl --json",
)


class _Display:
    """Phases and sequences scored, on a terminal only (nothing with --json/--quiet or off a terminal)."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.bar: Any = None
        self.task: Any = None
        self.done = self.tokens = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> _Display:
        if self.out.show_progress:
            from rich.progress import Progress, SpinnerColumn, TextColumn

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.fields[rate]}"),
                console=self.out.err,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("resolving", rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.t0 = time.perf_counter()
            self.bar.update(self.task, description=name)

    def advance(self, sequences: int, tokens: int) -> None:
        if self.bar is not None:
            self.done += sequences
            self.tokens += tokens
            seconds = max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(
                self.task,
                rate=f"{self.done:,} sequences, {self.done / seconds:,.1f}/s, {self.tokens / seconds:,.0f} tokens/s",
            )


def _summary_table(out: Out, s: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    def num(x: float | None, fmt: str = ".6g") -> str:
        return "-" if x is None else format(x, fmt)

    table = Table(title="vhtool evaluate", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    interval = f" (95% CI {s.interval[0]:.4f} - {s.interval[1]:.4f})" if s.interval else ""
    rows: list[tuple[str, str]] = [
        ("records", f"{s.count}" + (f" ({s.skipped} skipped)" if s.skipped else "") + f", {s.best_of_n} best-of-N"),
        ("accuracy", f"{num(s.accuracy, '.4f')}{interval}"),
        ("correct", f"{s.correct} ({s.ties} ties, counted as incorrect; {s.nonfinite} non-finite)"),
    ]
    for i, sub in enumerate(s.subsets):
        rows.append(("subsets" if i == 0 else "", f"{sub.name}: {sub.accuracy:.4f} ({sub.correct}/{sub.count})"))
    if s.subsets:
        rows.append(("mean over subsets", num(s.mean_over_subsets, ".4f")))
    padding = 0.0 if not s.padded_tokens else 1 - s.forwarded_tokens / s.padded_tokens
    rows += [
        (
            "margin",
            f"mean {num(s.margin_mean)}, std {num(s.margin_std)}, min {num(s.margin_min)}, max {num(s.margin_max)}",
        ),
        (
            "sequences",
            f"{s.answers} answers, {s.sequences} distinct scored; {s.tokens} tokens "
            f"({padding:.1%} padding, {s.truncated} records truncated)",
        ),
        (
            "prompt cache",
            s.prompt_cache
            + (
                f" ({s.cached_prompts} prompts run once for {s.cached_answers} answers, "
                f"{s.tokens - s.forwarded_tokens} tokens not recomputed)"
                if s.cached_prompts
                else ""
            ),
        ),
        ("speed", f"{s.pairs_per_s:,.1f} records/s"),
        ("time", f"{s.seconds:.2f} s scoring + {s.load_seconds:.2f} s loading"),
        ("head", f"{s.head} ({s.head_reason})"),
        ("join", s.join),
        ("compute", f"{s.dtype} on {s.device}, {s.padding_side} padding, {s.forward} forward"),
    ]
    if s.ranks > 1:
        rows.append(("ranks", f"{s.ranks} (batches shared round-robin)"))
    if s.output:
        rows.append(("output", s.output))
    c = s.comparison
    if c is not None:
        rows.append(
            (
                "compare",
                f"{c.previous}: {c.paired} paired, {c.fixed} fixed, {c.broke} broke, accuracy "
                f"{c.previous_accuracy:.4f} -> {c.accuracy:.4f}, exact McNemar p = {c.p_value:.4g}",
            )
        )
    if s.gate.require_accuracy is not None or s.gate.require_no_regression:
        failures = s.gate_failures()
        rows.append(("gate", "failed" if failures else "passed"))
    if out.show_progress:  # the histogram is for a person at a terminal; --json carries the same numbers
        rows.extend(("margin histogram" if k == "histogram" else k, v) for k, v in _histogram_rows(s))
    for k, v in rows:
        table.add_row(k, escape(str(v)))
    out.err.print(table)


def _precheck(checkpoint: str, source: Any, options: Any, subset_field: str) -> None:
    """What the files can tell before torch loads: a local JSONL's records (shape only, with --on-error fail),
    an empty one, and a checkpoint that is an encoder-decoder or has no head (see vhtool score)."""
    from vhtool.models.evaluate import parse_pair, read_pairs
    from vhtool.models.scoring.inputs import record_shape
    from vhtool.models.scoring.precheck import check_checkpoint_files
    from vhtool.models.scoring.results import BadRecordError

    if source.path is not None and source.kind() == "jsonl":
        count = 0
        for item in read_pairs(source):
            count += 1
            if options.on_error != "fail":
                continue
            try:
                if item.error is not None:
                    raise InputError(item.error)
                for answer in parse_pair(item.payload, subset_field=subset_field).answers:
                    record_shape(answer)
            except InputError as exc:
                where = f"{source.label()}: {source.unit} {item.line}"
                raise BadRecordError(f"{where}: {exc}.", index=item.index, line=item.line) from None
        if count == 0:
            raise InputError(f"{source.label()}: no records to evaluate (the input is empty); nothing was written.")
    check_checkpoint_files(checkpoint, options)


@handle_errors
def evaluate_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Reward model or critic: local directory, Hub id or builtin:*.",
            show_default=False,
        ),
    ],
    input_arg: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            metavar="PAIRS",
            help=(
                "Preference records: a JSONL file ('-' reads stdin), a JSON array or Parquet file, or a Hub data set "
                "ORG/NAME (with --split). Fields: chosen, rejected (or a list of rejected: best-of-N), optional "
                "prompt and subset; strings or lists of {role, content} messages."
            ),
            show_default=False,
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option(
            "--split", metavar="SPLIT", help="The split of a data set (default: its only one).", show_default=False
        ),
    ] = None,
    subset_field: Annotated[
        str, typer.Option("--subset-field", metavar="NAME", help="The field that groups records.")
    ] = "subset",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write the records (JSONL) to FILE, not stdout.", show_default=False
        ),
    ] = None,
    require_accuracy: Annotated[
        float | None,
        typer.Option(
            "--require-accuracy",
            metavar="X",
            help="Exit 1 when accuracy (or, with --conservative, its 95%% lower bound) is below X (0..1).",
            show_default=False,
        ),
    ] = None,
    conservative: Annotated[
        bool, typer.Option("--conservative", help="Gate on the 95% Wilson lower bound of accuracy.")
    ] = False,
    compare_with: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            metavar="PREVIOUS",
            help="The -o output of an earlier run on the same pairs: records that flipped each way, exact McNemar p.",
            show_default=False,
        ),
    ] = None,
    require_no_regression: Annotated[
        bool,
        typer.Option("--require-no-regression", help="With --compare: exit 1 when significantly worse (p < --alpha)."),
    ] = False,
    alpha: Annotated[float, typer.Option("--alpha", metavar="P", help="Significance level of --compare.")] = 0.05,
    head: HeadOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, metavar="N", help="At most N sequences per batch.", show_default=False),
    ] = None,
    max_batch_tokens: MaxBatchTokensOpt = 16384,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            min=1,
            metavar="N",
            help="Truncate longer answers to N tokens (flagged).",
            show_default=False,
        ),
    ] = None,
    join: Annotated[
        Join | None,
        typer.Option(
            "--join",
            help="How a string prompt and answer are joined: with the tokenizer's chat template, or concatenated. "
            "Default: chat if the tokenizer has a template.",
            show_default=False,
        ),
    ] = None,
    dtype: DTypeOpt = DType("float32"),
    device: DeviceOpt = Device("auto"),
    on_error: OnErrorOpt = OnError("fail"),
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    readout: ReadoutOpt = None,
    no_normalize: NoNormalizeOpt = False,
    allow_pickle: AllowPickleOpt = False,
    prompt_cache: Annotated[
        bool,
        typer.Option(
            "--prompt-cache/--no-prompt-cache",
            help="Causal models: run the prompt an answer shares with the other answers of its record once and "
            "the answers from its cached keys and values (checked at load; off for other models).",
        ),
    ] = True,
    dist_timeout: DistTimeoutOpt = 1800.0,
    allow_missing: AllowMissingOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """How often the model scores the chosen answer above the rejected one(s); exit 1 below the gate.

    Each answer is scored as `vhtool score` scores the same record (prompt + completion, or text), so
    every number equals vhtool score's. Identical sequences are scored once (within each window of 4096
    records), in length-sorted batches; for a causal model the prompt a record's answers share runs once and
    the answers from its cached keys and values (--no-prompt-cache: each sequence whole).
    The records go to stdout, or to FILE with -o, in input order: JSON lines with index, chosen,
    rejected, margin, correct, tie and subset. The summary (accuracy with a 95% Wilson interval, ties,
    subsets, margins) goes to stderr; with --json, stdout gets one object with summary, records and
    skipped.

    A record is correct when chosen scores strictly above every rejected answer; a tie counts as
    incorrect and is reported. The gates exit 1 after writing the complete output and summary.

    Under `torchrun --nproc-per-node K -m vhtool evaluate ...` the ranks share the batches; rank 0 writes
    the one output, byte-identical to a single process's.
    """
    from vhtool.models.evaluate import EvalOptions, Gate, PairResult, evaluate_pairs, source_from_arg
    from vhtool.models.scoring.ranks import detect_distributed
    from vhtool.models.scoring.results import SkippedRecord

    env = detect_distributed()
    worker = env is not None and env.rank != 0
    out = Out(json_mode=json_out, quiet=quiet or worker)
    options = score_options(
        head=head,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
        join=join,
        dtype=dtype,
        device=device,
        on_error=on_error,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
        allow_missing=allow_missing,
        readout=readout,
        no_normalize=no_normalize,
        allow_pickle=allow_pickle,
    )
    eval_options = EvalOptions(
        subset_field=subset_field,
        compare=compare_with,
        alpha=alpha,
        prompt_cache=prompt_cache,
        gate=Gate(
            require_accuracy=require_accuracy, conservative=conservative, require_no_regression=require_no_regression
        ),
    )
    source = source_from_arg(input_arg, split=split)
    try:
        if output is not None and not worker:  # the output first, as score does; only rank 0 writes it
            from vhtool.checkpoint.atomic import AtomicFile
            from vhtool.models.evaluate.run import check_eval_output

            target = check_eval_output(
                output, force=force, source=source, checkpoint=checkpoint, compare_with=compare_with
            )
            AtomicFile(target).discard()
        _precheck(checkpoint, source, options, subset_field)
    except VhtoolError as exc:
        if worker:  # every rank finds the same; rank 0 prints it
            raise typer.Exit(exc.exit_code) from None
        raise

    collected: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []

    def on_skip(rec: SkippedRecord) -> None:
        skipped.append({"index": rec.index, "line": rec.line, "reason": rec.reason})
        out.warn(f"{source.label()}: {source.unit} {rec.line}: {rec.reason}; skipped.")

    def on_record(rec: PairResult) -> None:
        if json_out:
            collected.append(rec.to_json())
        else:
            sys.stdout.write(json.dumps(rec.to_json(), allow_nan=False) + "\n")

    try:
        with _Display(out) as display:
            summary = evaluate_pairs(
                checkpoint,
                source=source,
                options=options,
                eval_options=eval_options,
                output=output,
                force=force,
                on_record=on_record if output is None else None,
                on_skip=on_skip,
                progress=display.advance,
                on_phase=display.phase,
                validate_first=output is None and not json_out,
                env=env,
                timeout_s=dist_timeout,
            )
        sys.stdout.flush()
    except VhtoolError as exc:
        if worker:  # the same error is raised on every rank; rank 0 prints it
            raise typer.Exit(exc.exit_code) from None
        raise
    except BrokenPipeError:  # e.g. `vhtool evaluate ... | head`: the reader has gone, stop quietly
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
    elif not quiet:
        _summary_table(out, summary)
    failures = summary.gate_failures()
    if failures:
        raise VerificationError("; ".join(failures) + ".", problems=failures)


__all__ = ["EXAMPLES", "evaluate_command"]
