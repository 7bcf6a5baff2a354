"""``vhtool inspect-layers``: a checkpoint's tensors grouped by block, from headers only (no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from vhtool.cli.common import JsonOpt, Out, QuietOpt, RevisionOpt, examples, handle_errors, human_bytes
from vhtool.errors import InputError, VerificationError

EXAMPLES = examples(
    "vhtool inspect-layers builtin:tiny-gpt2",
    "vhtool init builtin:tiny-gpt2",
    "vhtool inspect-layers tiny-gpt2-value-head --filter '*.0.*' --tensors",
    "vhtool inspect-layers tiny-gpt2-value-head --diff builtin:tiny-gpt2 --json",
)

if TYPE_CHECKING:
    from vhtool.checkpoint.inspect import DiffResult, InspectResult


@handle_errors
def inspect_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Local checkpoint directory, Hub repo id, or a built-in (builtin:tiny-gpt2, ...).",
            show_default=False,
        ),
    ],
    filter_glob: Annotated[
        str | None,
        typer.Option("--filter", metavar="GLOB", help="Only tensors whose name matches GLOB (fnmatch, e.g. '*.0.*')."),
    ] = None,
    tensors: Annotated[
        bool, typer.Option("--tensors", help="Also list every tensor (name, shape, dtype, file).")
    ] = False,
    require_value_head: Annotated[
        bool,
        typer.Option(
            "--require-value-head",
            help="Exit 1 unless a value head is present, [1, hidden] and of a float dtype (F16/BF16/F32/F64).",
        ),
    ] = False,
    require_reward_adapter: Annotated[
        bool,
        typer.Option(
            "--require-reward-adapter",
            help="Exit 1 unless a well-formed LoRA reward adapter with a [1, hidden] score head is present.",
        ),
    ] = False,
    diff: Annotated[
        str | None,
        typer.Option(
            "--diff", metavar="CHECKPOINT_B", help="Compare with CHECKPOINT_B: tensors only in one, other shape/dtype."
        ),
    ] = None,
    hash_bytes: Annotated[
        bool, typer.Option("--hash", help="With --diff: also compare tensor bytes (reads the data, shard by shard).")
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help=(
                "Read a pickle-only checkpoint (pytorch_model.bin: DeepSpeed-Chat, trlx) with torch's weights-only "
                "loader (loads the tensors; everything else stays header-only)."
            ),
        ),
    ] = False,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what a checkpoint holds, reading only safetensors headers, config.json and vhtool.json.

    Rows: embeddings, one per block, final norm, LM head, value head, reward adapter, other; each with
    tensors, parameters, dtypes, bytes and marks (tied, shared, frozen, lora). Works on Hub repos
    through HTTP range reads of the headers. The --json schema is documented in docs/inspect-schema.md.
    """
    from vhtool.checkpoint.inspect import diff_checkpoints, inspect_checkpoint

    out = Out(json_mode=json_out, quiet=quiet)
    if hash_bytes and diff is None:
        raise InputError("--hash compares tensor bytes between two checkpoints; use it with --diff B.")
    if diff is not None:
        if require_value_head or require_reward_adapter or tensors:
            raise InputError("--diff cannot be combined with --tensors or --require-*; run them separately.")
        with out.progress("hashing tensors") as factory:
            result = diff_checkpoints(
                checkpoint, diff, revision=revision, filter_glob=filter_glob, hash=hash_bytes, progress_factory=factory
            )
        if json_out:
            out.data(result.to_json())
        elif not quiet:
            _print_diff(out, result)
        return

    report = inspect_checkpoint(checkpoint, revision=revision, filter_glob=filter_glob, allow_pickle=allow_pickle)
    if json_out:
        out.data(report.to_json())
    elif not quiet:
        _print_report(out, report, show_tensors=tensors)
    problems: list[str] = []
    if require_value_head:
        problems += report.require_value_head()
    if require_reward_adapter:
        problems += report.require_reward_adapter()
    if problems:
        raise VerificationError(f"{checkpoint}: " + "; ".join(problems), problems=problems)


def _human_count(n: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _print_report(out: Out, report: InspectResult, *, show_tensors: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    model = report.model
    arch = model.get("model_type") or "unknown architecture"
    blocks = ", ".join(f"{escape(p)} x{n}" for p, n in report.containers) or "no blocks found"
    where = report.source.location + (f"@{report.source.revision}" if report.source.revision else "")
    header = (
        f"[bold]{escape(where)}[/bold] ({report.source.kind}, {report.layout}, {escape(str(arch))}"
        + (f", role {escape(report.role)}" if report.role else "")
        + f") hidden {model.get('hidden_size')}, blocks: {blocks}"
    )
    out.console.print(header, soft_wrap=False)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("group", overflow="fold")
    for col in ("tensors", "params"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("marks", overflow="fold")
    for g in report.groups:
        table.add_row(
            escape(g.label),
            str(g.tensors),
            f"{g.params:,}",
            ",".join(g.dtypes) or "-",
            human_bytes(g.nbytes),
            escape(", ".join(g.marks)),
        )
    out.console.print(table)
    if show_tensors:
        _print_tensors(out, report)
    tot = report.totals
    dtypes = ", ".join(f"{d} {_human_count(p)} ({human_bytes(b)})" for d, (_, p, b) in sorted(tot.by_dtype.items()))
    scope = f" matching {report.filter!r}" if report.filter else ""
    out.console.print(
        escape(
            f"Total{scope}: {tot.tensors} tensors, {tot.params:,} parameters ({_human_count(tot.params)}), "
            f"{human_bytes(tot.nbytes)}; by dtype: {dtypes or '-'}"
        ),
        soft_wrap=False,
    )
    vh = report.value_head
    status = "ok" if vh.ok else ("missing" if not vh.found else "PROBLEM: " + "; ".join(vh.problems))
    out.console.print(escape(f"Value head: {vh.summary()} [{status}]"), soft_wrap=False)
    for note in vh.notes:
        if note.startswith(("convention ", "trlx's hydra")):  # the framework's convention, readout, normalisation
            out.info(escape(note))
    if report.reward_adapter is not None:
        out.console.print(escape(f"Reward adapter: {report.reward_adapter.summary()}"), soft_wrap=False)
    if report.reference is not None:
        ref = report.reference
        out.console.print(
            escape(
                f"Reference: frozen; shares {ref['shared_tensors']} tensors with its policy "
                f"(shared_layers={ref['shared_layers']}, pattern={ref['pattern']})"
            ),
            soft_wrap=False,
        )
    for note in report.notes:
        out.info(escape(note))


def _print_tensors(out: Out, report: InspectResult) -> None:
    """Every tensor, one row each: a table when it fits the terminal, else a name line and an indented detail
    line per tensor. A name or a file name is never split; one file for all is said once, in the title."""
    from rich.markup import escape
    from rich.table import Table

    files = sorted({t.file for t in report.tensors})
    one_file = len(files) == 1
    cols = ["name", "shape", "dtype", "params", "bytes"] + ([] if one_file else ["file"]) + ["marks"]
    rows = [
        {
            "name": t.name,
            "shape": str(list(t.shape)),
            "dtype": t.dtype,
            "params": f"{t.params:,}",
            "bytes": human_bytes(t.nbytes),
            "file": t.file,
            "marks": ", ".join(t.marks),
        }
        for t in report.tensors
    ]
    title = f"tensors (all in {files[0]})" if one_file else "tensors"
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in cols}
    if sum(widths.values()) + 3 * (len(cols) - 1) <= out.console.width:
        tt = Table(show_edge=False, pad_edge=False, title=escape(title), title_justify="left")
        for col in cols:
            tt.add_column(col, justify="right" if col in ("params", "bytes") else "left", no_wrap=True)
        for r in rows:
            tt.add_row(*(escape(r[c]) for c in cols))
        out.console.print(tt)
        return
    out.console.print(escape(title + ":"))  # too wide for a table: the name on its own line, whole
    for r in rows:
        out.console.print(escape(r["name"]), soft_wrap=True)
        detail = [r["shape"], r["dtype"], f"{r['params']} params", r["bytes"]]
        detail += [] if one_file else [r["file"]]
        detail += [r["marks"]] if r["marks"] else []
        out.console.print("    " + escape("  ".join(detail)), soft_wrap=True)


def _print_diff(out: Out, d: DiffResult) -> None:
    from rich.markup import escape

    def line(text: str) -> None:
        out.console.print(escape(text))

    line(f"A: {d.a.location}  B: {d.b.location}" + (f"  (filter {d.filter!r})" if d.filter else ""))
    for t in d.only_in_a:
        line(f"- only in A: {t['name']} {t['shape']} {t['dtype']}")
    for t in d.only_in_b:
        line(f"+ only in B: {t['name']} {t['shape']} {t['dtype']}")
    for c in d.changed:
        line(f"~ {c['name']}: {c['a']['shape']} {c['a']['dtype']} -> {c['b']['shape']} {c['b']['dtype']}")
    for name in d.bytes_differ:
        line(f"# bytes differ: {name}")
    summary: dict[str, Any] = {
        "compared": d.compared,
        "only in A": len(d.only_in_a),
        "only in B": len(d.only_in_b),
        "shape/dtype differ": len(d.changed),
    }
    if d.hashed:
        summary["bytes differ"] = len(d.bytes_differ)
    verdict = "identical" if d.identical else "different"
    if not d.hashed and d.identical:
        verdict = "same tensor names, shapes and dtypes (bytes not compared; add --hash)"
    line(", ".join(f"{k}: {v}" for k, v in summary.items()) + f" -> {verdict}")
