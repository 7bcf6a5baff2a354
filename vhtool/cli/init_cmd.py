"""``vhtool init``: a policy checkpoint with a fresh value head."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated

import typer

from vhtool.choices import INIT_STRATEGIES
from vhtool.cli.common import (
    Choice,
    ForceOpt,
    HashLinksOpt,
    JsonOpt,
    LinkMode,
    LinkOpt,
    NoFsyncOpt,
    Out,
    OutOpt,
    QuietOpt,
    RevisionOpt,
    choice_enum,
    default_out,
    examples,
    handle_errors,
)

if TYPE_CHECKING:
    VHeadInit = Choice
else:
    VHeadInit = choice_enum("VHeadInit", INIT_STRATEGIES)

EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2",
    "vhtool init builtin:tiny-llama --v-head-init normal --seed 1 -o policy",
    "vhtool init builtin:tiny-gpt2 -o gpt2-policy --link copy --json",
    "vhtool init gpt2-policy -o gpt2-fresh-head --reinit-head",
)


@handle_errors
def init_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="Local directory, Hub id, or a built-in (builtin:tiny-gpt2, ...).",
            show_default=False,
        ),
    ],
    output: OutOpt = None,
    v_head_init: Annotated[
        VHeadInit,
        typer.Option("--v-head-init", help="random (nn.Linear's default) or normal (N(0, range), zero bias)."),
    ] = VHeadInit("random"),
    v_head_initializer_range: Annotated[
        float, typer.Option("--v-head-initializer-range", metavar="STD", help="Std of the normal init.")
    ] = 0.2,
    seed: Annotated[
        int, typer.Option("--seed", metavar="N", help="Seed of the value-head init (same seed, same bytes).")
    ] = 0,
    revision: RevisionOpt = None,
    link: LinkOpt = LinkMode("auto"),
    hash_links: HashLinksOpt = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept a pickle-only source (read with weights_only=True).")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Accepted for parity; init never runs model code.")
    ] = False,
    no_fsync: NoFsyncOpt = False,
    reinit_head: Annotated[
        bool,
        typer.Option(
            "--reinit-head",
            help="MODEL already has a value head (e.g. a trained one): replace it with a fresh one. Without it such "
            "a MODEL is refused; --force never does this.",
        ),
    ] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a policy checkpoint: MODEL's files plus a value head (v_head.summary.*), without loading the model.

    A single-file source stays one file (the value head added to its header, the data streamed by the
    kernel), so TRL 1.12.0 can load it; a sharded source keeps its shards and gains a small value-head
    shard. Default OUT: ./<MODEL name>-value-head in the current directory. A MODEL that already has a value
    head is refused unless --reinit-head; --force only replaces a previous output.
    """
    from vhtool.checkpoint.init_op import HeadSpec, init_checkpoint
    from vhtool.hub import resolve_source

    out = Out(json_mode=json_out, quiet=quiet)
    head = HeadSpec(strategy=v_head_init.value, initializer_range=v_head_initializer_range, seed=seed)
    source = resolve_source(model, revision=revision, allow_pickle=allow_pickle)
    target = output if output is not None else default_out(source.name_path, "value-head")
    with ExitStack() as stack:
        src_dir = source.path
        if allow_pickle:
            from vhtool.checkpoint.pickle_src import safetensors_view

            src_dir = stack.enter_context(safetensors_view(src_dir))
        factory = stack.enter_context(out.progress("copying weights"))
        result = init_checkpoint(
            src_dir,
            target,
            head=head,
            source=source.record(),
            link=link.value,
            force=force,
            reinit_head=reinit_head,
            want_hash=hash_links,
            progress_factory=factory,
            durable=not no_fsync,
        )
    total = sum(f.size for f in result.files)
    out.finish(
        result,
        notes=result.notes,
        line=lambda: (
            f"Wrote {result.out} ({result.layout}, {result.architecture}, {total / 1e6:.1f} MB) with value head "
            f"{list(result.head_shape)} {result.head_dtype} ({head.strategy}) in {result.seconds:.2f} s."
        ),
    )
