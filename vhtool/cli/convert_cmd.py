"""``vhtool convert``: move a value or reward head between the conventions in use, out of core."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vhtool.choices import CONVENTIONS, HEAD_NAMES, ROLES, SOURCE_CONVENTIONS
from vhtool.cli.common import (
    Choice,
    ForceOpt,
    JsonOpt,
    NoFsyncOpt,
    Out,
    OutOpt,
    QuietOpt,
    choice_enum,
    default_out,
    examples,
    handle_errors,
)

if TYPE_CHECKING:
    Target = Choice
    HeadName = Choice
    Source = Choice
    Role = Choice
else:
    Target = choice_enum("Target", CONVENTIONS)  # convert.TARGETS is CONVENTIONS
    HeadName = choice_enum("HeadName", HEAD_NAMES)
    Source = choice_enum("Source", SOURCE_CONVENTIONS)
    Role = choice_enum("Role", ROLES)

EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2 --v-head-init normal -o policy",
    "vhtool convert policy --to seq-cls",
    "vhtool convert policy-seq-cls --to vhtool -o policy-again",
    "vhtool convert policy --to token-cls --head-name score --json",
)


@handle_errors
def convert_command(
    src: Annotated[
        str,
        typer.Argument(
            metavar="SRC",
            help="A checkpoint (vhtool, sidecar, seq-cls or token-cls): directory, Hub id, builtin:*.",
            show_default=False,
        ),
    ],
    to: Annotated[
        Target,
        typer.Option(
            "--to",
            help=(
                "Target convention: vhtool (v_head.summary.* inline, TRL), sidecar (value_head.safetensors, "
                "LLaMA-Factory), seq-cls or token-cls (HF ...ForSequence/TokenClassification with num_labels=1), "
                "openrlhf, deepspeed-chat, trlx. See docs/conventions.md."
            ),
            show_default=False,
        ),
    ],
    output: OutOpt = None,
    head_name: Annotated[
        HeadName | None,
        typer.Option(
            "--head-name",
            help=(
                "Head tensor name for seq-cls/token-cls: score, value_head (OpenRLHF) or classifier (GPT-2 family "
                "token classifiers). Default: the source's value_head_prefix, else what transformers uses."
            ),
            show_default=False,
        ),
    ] = None,
    pad_token_id: Annotated[
        int | None,
        typer.Option(
            "--pad-token-id",
            metavar="ID",
            help="Set pad_token_id in config.json (seq-cls needs one to score batches).",
        ),
    ] = None,
    allow_lossy: Annotated[
        bool,
        typer.Option("--allow-lossy", help="Drop a non-zero bias the target cannot hold (recorded in vhtool.json)."),
    ] = False,
    source_convention: Annotated[
        Source,
        typer.Option(
            "--from",
            help="SRC's convention (auto: detected from its tensor names and config; a contradiction is refused).",
        ),
    ] = Source("auto"),
    role: Annotated[
        Role | None,
        typer.Option(
            "--role",
            help="What the output is: reward or critic (default: the source convention's).",
            show_default=False,
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Read a pytorch_model.bin source with torch's weights-only loader."),
    ] = False,
    config_from: Annotated[
        Path | None,
        typer.Option(
            "--config-from",
            metavar="MODEL",
            help="A model folder whose config.json describes SRC (a bare state dict such as trlx's summarisation RM).",
            show_default=False,
        ),
    ] = None,
    no_fsync: NoFsyncOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert SRC's value/reward head to another convention, renaming tensors in the headers.

    SRC's convention is detected from its headers. Tensor bytes are streamed by the kernel, shard by
    shard (constant memory); the LM head is dropped (classifier targets) or required (vhtool, sidecar);
    config.json gets the target's architectures and num_labels=1. Information the target cannot hold
    is warned about and listed under `conversion.lost` in vhtool.json. Default OUT: ./<SRC name>-<target>
    in the current directory (next to SRC when you are inside it).

    Adoption: SRC already in the target convention (vhtool or sidecar) but without vhtool.json, as
    save_pretrained writes it after training, is copied unchanged (the trained head bit for bit) with a
    vhtool.json recording its files' sha256 and where it came from (`adopted`):
    `vhtool convert trained --to vhtool -o trained-vhtool`.

    Critics from a default init: a seq-cls head has no bias; the random bias of a head vhtool init made
    and nobody trained since (vhtool.json records init_strategy random and the head's file still has the
    recorded sha256) is dropped with a note (`conversion.dropped_untrained`); a trained non-zero bias
    needs --allow-lossy (or --to token-cls, which keeps it). See docs/trained-checkpoints.md.
    """
    from vhtool.checkpoint.convert import convert_checkpoint
    from vhtool.hub import resolve_source

    out = Out(json_mode=json_out, quiet=quiet)
    source = resolve_source(src, allow_pickle=allow_pickle)
    target = output if output is not None else default_out(source.name_path, to.value)
    with ExitStack() as stack:
        factory = stack.enter_context(out.progress("converting"))
        result = convert_checkpoint(
            source.path,
            target,
            to=to.value,
            head_name=None if head_name is None else head_name.value,
            pad_token_id=pad_token_id,
            allow_lossy=allow_lossy,
            force=force,
            progress_factory=factory,
            durable=not no_fsync,
            source=source_convention.value,
            role=None if role is None else role.value,
            allow_pickle=allow_pickle,
            config_from=None if config_from is None else config_from.expanduser(),
        )
    for warning in result.warnings:
        out.warn(warning)
    for note in result.notes:
        out.note(note)
    if json_out:
        out.data(result.to_json())
        return
    lost = f"; lost: {', '.join(result.lost)}" if result.lost else ""
    out.result(
        f"Wrote {result.out} ({result.source_convention} -> {result.target}, head {', '.join(result.head_tensors)} "
        f"in {result.head_file}, {result.layout}) in {result.seconds:.2f} s{lost}."
    )
