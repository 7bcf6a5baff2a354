"""``vhtool push``: publish a checkpoint to the Hugging Face Hub in one commit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vhtool.cli.common import JsonOpt, Out, QuietOpt, examples, handle_errors, human_bytes

EXAMPLES = examples(
    "vhtool init builtin:tiny-gpt2 -o policy",
    "vhtool push policy my-name/tiny-gpt2-value-head --dry-run",
    "vhtool push policy my-name/tiny-gpt2-value-head --dry-run --json",
    "vhtool push policy my-name/tiny-gpt2-value-head --private --dry-run -q",
)


@handle_errors
def push_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT", help="The checkpoint directory to publish (never modified).", show_default=False
        ),
    ],
    repo_id: Annotated[
        str,
        typer.Argument(
            metavar="REPO_ID", help="Hub model repo NAMESPACE/NAME; created when missing.", show_default=False
        ),
    ],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (an existing one is left as is).")
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option("--revision", metavar="BRANCH", help="Branch to push to (created from main when missing)."),
    ] = None,
    commit_message: Annotated[
        str | None, typer.Option("--commit-message", metavar="TEXT", help="Commit title (default: Upload <name>).")
    ] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what would be uploaded (added/changed/unchanged, or 'not checked' when the Hub cannot be "
            "reached); write nothing.",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="Hub token (default: HF_TOKEN, then the `hf auth login` cache). Never printed.",
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Read a PEFT folder's pickled value head (TRL's pytorch_model.bin) with weights_only=True; "
            "it is published as model.safetensors.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Verify CHECKPOINT and publish it to REPO_ID in one commit, uploading only what the remote lacks.

    Pushed: weights (and index), config, generation config, tokenizer files, vhtool.json, the reward
    adapter's subfolder, and a model card (README.md) generated unless the checkpoint has one. Dotfiles,
    pickle files and folders vhtool.json does not reference are skipped. HF_ENDPOINT is honoured.

    A checkpoint saved by save_pretrained after training (no vhtool.json; a full model, or a PEFT policy
    folder) is pushed with a generated vhtool.json recording its files' sha256 and where it came from
    (`adopted`), in the same commit; the folder itself is never written to.
    """
    from rich.markup import escape

    from vhtool.checkpoint.push_op import NOT_CHECKED, push_checkpoint

    out = Out(json_mode=json_out, quiet=quiet)
    result = push_checkpoint(
        checkpoint,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        create_pr=create_pr,
        dry_run=dry_run,
        token=token,
        allow_pickle=allow_pickle,
    )
    for note in result.notes:
        if note != "nothing to push, remote is up to date":
            out.warn(note)
    if json_out:
        out.data(result.to_json())
        return
    where = f"{result.repo_id}@{result.revision}"
    if dry_run:
        out.result(f"Plan for {escape(where)}: {escape(result.remote.note)}")
        width = max((len(f.status) for f in result.files), default=9)
        for f in result.files:
            out.result(f"  {f.status:<{width}} {escape(f.path_in_repo):<48} {human_bytes(f.size):>12}")
        for path, reason in result.skipped:
            out.info(f"  {'skipped':<{width}} {escape(path)} ({escape(reason)})")
        if not result.remote.checked:
            count = len(result.paths(NOT_CHECKED))
            size = human_bytes(result.bytes_to_upload)
            out.result(
                f"{count} file(s), {size} at most to upload; the remote was not checked, so files it already has "
                "are not known."
            )
            return
        verb = "nothing to push, remote is up to date" if result.nothing_to_push else "to upload"
        out.result(f"{len(result.paths('added', 'changed'))} file(s), {human_bytes(result.bytes_to_upload)} {verb}.")
        return
    if not result.pushed:
        out.result(f"Nothing to push, remote is up to date ({escape(where)}, {len(result.files)} file(s) unchanged).")
        return
    size = human_bytes(result.bytes_to_upload)
    out.result(
        f"Pushed {len(result.paths('added', 'changed'))} file(s) ({size}) to {escape(where)}; "
        f"{len(result.paths('unchanged'))} unchanged, {len(result.paths('deleted'))} deleted."
    )
    out.result(f"Commit: {escape(result.pr_url or result.commit_url or '')}")
