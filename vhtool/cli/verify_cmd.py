"""``vhtool verify``: a checkpoint's integrity (files, index, headers, value head, reward adapter)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vhtool.cli.common import AllowMissingOpt, JsonOpt, Out, QuietOpt, examples, handle_errors
from vhtool.errors import VerificationError

EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2",
    "vhtool verify tiny-gpt2-value-head",
    "vhtool verify tiny-gpt2-value-head --forward --hash",
    "vhtool verify tiny-gpt2-value-head --json",
)


def _builtin_names(text: str) -> str:
    """``text`` with each built-in model's installed folder written ``builtin:NAME`` (a source a manifest records)."""
    from vhtool.builtin import BUILTIN_PREFIX, builtin_path, list_builtin

    for name in sorted(list_builtin(), key=len, reverse=True):  # tiny-gpt2-x before tiny-gpt2
        ref = name if name.startswith(BUILTIN_PREFIX) else BUILTIN_PREFIX + name
        text = text.replace(str(builtin_path(ref)), ref)
    return text


@handle_errors
def verify_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT", help="The checkpoint: local directory, Hub id or builtin:*.", show_default=False
        ),
    ],
    forward: Annotated[
        bool,
        typer.Option(
            "--forward",
            help="Also load the model and run one tiny batch on the CPU: finite logits and values, and base logits "
            "equal to the recorded local or built-in source's.",
        ),
    ] = False,
    hash_all: Annotated[
        bool, typer.Option("--hash", help="Also hash weight files recorded without a sha256 (linked files).")
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Read a PEFT folder's pickled value head (TRL's pytorch_model.bin) with weights_only=True.",
        ),
    ] = False,
    allow_missing: AllowMissingOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check a checkpoint's integrity: files, index, headers, value head and reward adapter.

    Weight files are checked against vhtool.json (size, sha256), the index against the headers, the
    value head for presence, shape [1, hidden] and finite values, the reward adapter for its form.
    Exit 0 when every check passes, 1 with the list of failures, 2 when CHECKPOINT is not a checkpoint
    (missing, or no config.json).

    A checkpoint saved by save_pretrained after training (vhtool's or TRL's class, single-file or sharded;
    a PEFT policy folder with the head in model.safetensors, value_head.safetensors or, with --allow-pickle,
    TRL's pytorch_model.bin) has no vhtool.json: it is checked from its files, and the notes say what
    could not be checked.
    """
    from rich.markup import escape

    from vhtool.checkpoint.verify_op import verify_checkpoint
    from vhtool.hub import resolve_source

    out = Out(json_mode=json_out, quiet=quiet)
    where = resolve_source(checkpoint).path
    result = verify_checkpoint(where, hash_all=hash_all, allow_pickle=allow_pickle)

    def shown(text: str) -> str:
        """``text`` naming models as the user does (``builtin:tiny-gpt2``, a Hub id), not by installed paths."""
        path = str(where)
        if path != checkpoint and not Path(checkpoint).exists():
            for suffix in ("-value-head", "-reinit"):  # the suggested -o: a folder here, named after the model
                text = text.replace(path + suffix, Path(path).name + suffix)
            text = text.replace(path, checkpoint)
        return _builtin_names(text)

    if forward:  # the file checks need no torch; the forward check is the torch world's
        from vhtool.models.smoke import verify_forward

        result = verify_forward(result, allow_missing=allow_missing)
    if json_out:
        out.data(result.to_json())
    else:
        width = max(len(c.name) for c in result.checks)
        for c in result.checks:
            out.result(escape(shown(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")))
        for note in result.notes:
            out.info(escape(shown(f"note: {note}")))
        if result.ok:
            out.result(escape(shown(f"{result.path}: all {len(result.checks)} checks passed.")))
    if not result.ok:
        failed = result.failures
        raise VerificationError(
            shown(
                f"{result.path}: {len(failed)} of {len(result.checks)} checks failed: "
                + "; ".join(f"{c.name}: {c.detail}" for c in failed)
            ),
            problems=[c.name for c in failed],
        )
