"""``vhtool make-reference``: a frozen reference checkpoint sharing its first layers with the policy."""

from __future__ import annotations

from typing import Annotated

import typer

from vhtool.cli.common import (
    ForceOpt,
    HashLinksOpt,
    JsonOpt,
    LinkMode,
    LinkOpt,
    NoFsyncOpt,
    Out,
    OutOpt,
    QuietOpt,
    default_out,
    examples,
    handle_errors,
)

EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2 -o policy",
    "vhtool make-reference policy --shared-layers 1",
    "vhtool make-reference policy -o full-reference",
    "vhtool inspect-layers policy-reference",
)


@handle_errors
def make_reference_command(
    policy: Annotated[
        str,
        typer.Argument(
            metavar="POLICY",
            help="Policy checkpoint: directory (default: the current one), Hub id or builtin:*.",
            show_default=False,
        ),
    ] = ".",
    shared_layers: Annotated[
        int | None,
        typer.Option(
            "--shared-layers",
            metavar="N",
            help="Share the embeddings and the first N blocks with the policy. Omit for a full frozen copy.",
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(
            "--pattern", metavar="PATTERN", help="Block pattern, e.g. 'model.layers.{layer}' (default: detected)."
        ),
    ] = None,
    output: OutOpt = None,
    link: LinkOpt = LinkMode("auto"),
    hash_links: HashLinksOpt = False,
    no_fsync: NoFsyncOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a frozen reference of POLICY that records which tensors it shares with it.

    The reference holds the policy's weight files (copied or linked, never loaded), so it loads on its
    own; vhtool.json records the block pattern, N, the shared tensor names and the policy files' sha256.
    Load both with vhtool.load_policy_and_reference(policy, reference) to share those tensors in memory.
    Default OUT: ./<POLICY name>-reference in the current directory (next to POLICY when you are inside it).
    """
    from vhtool.checkpoint.reference_op import make_reference
    from vhtool.hub import resolve_source

    out = Out(json_mode=json_out, quiet=quiet)
    source = resolve_source(policy)
    target = output if output is not None else default_out(source.name_path, "reference")
    with out.progress("copying weights") as factory:
        result = make_reference(
            source.path,
            target,
            shared_layers=shared_layers,
            pattern=pattern,
            link=link.value,
            force=force,
            want_hash=hash_links,
            progress_factory=factory,
            durable=not no_fsync,
        )
    n = len(result.shared_tensors)
    tensors = f"{n} tensor{'' if n == 1 else 's'}"
    if result.shared_layers is None:
        what = "a full frozen copy (nothing shared)"
    elif result.shared_layers == 0:  # only the embeddings: the count is theirs, not a block's
        what = f"the embeddings shared ({tensors}), none of the {result.num_blocks} blocks ({result.pattern})"
    else:
        what = (
            f"embeddings + {result.shared_layers} of {result.num_blocks} blocks shared ({result.pattern}, {tensors})"
        )
    out.finish(
        result, notes=result.notes, line=lambda: f"Wrote reference {result.out}: {what} in {result.seconds:.2f} s."
    )
