"""``vhtool init``: a policy checkpoint with a fresh value head."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from vhtool.cli.common import (
    ForceOpt,
    HashLinksOpt,
    JsonOpt,
    LinkOpt,
    NoFsyncOpt,
    Out,
    OutOpt,
    QuietOpt,
    RevisionOpt,
    handle_errors,
)


@handle_errors
def init_command(
    model: Annotated[str, typer.Argument(help="Local directory, Hub id, or a built-in (builtin:tiny-gpt2, ...).")],
    output: OutOpt = None,
    v_head_init: Annotated[
        str, typer.Option("--v-head-init", help="random (nn.Linear's default) or normal (N(0, range), zero bias).")
    ] = "random",
    v_head_initializer_range: Annotated[
        float, typer.Option("--v-head-initializer-range", help="Std of the normal init.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the value-head init (same seed, same bytes).")] = 0,
    revision: RevisionOpt = None,
    link: LinkOpt = "auto",
    hash_links: HashLinksOpt = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept a pickle-only source (read with weights_only=True).")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Accepted for parity; init never runs model code.")
    ] = False,
    no_fsync: NoFsyncOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a policy checkpoint: MODEL's files plus a value head (v_head.summary.*), without loading the model.

    A single-file source stays one file (the value head added to its header, the data streamed by the
    kernel), so TRL 1.12.0 can load it; a sharded source keeps its shards and gains a small value-head
    shard. Default OUT: ./<model-name>-value-head.
    """
    from vhtool.checkpoint.init_op import HeadSpec, default_output_name, init_checkpoint
    from vhtool.hub import resolve_source

    out = Out(json_mode=json_out, quiet=quiet)
    head = HeadSpec(strategy=v_head_init, initializer_range=v_head_initializer_range, seed=seed)
    target = output if output is not None else Path(default_output_name(model))
    source = resolve_source(model, revision=revision, allow_pickle=allow_pickle)
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
            link=link,
            force=force,
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
