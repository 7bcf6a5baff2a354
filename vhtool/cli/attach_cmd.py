"""``vhtool attach-reward-adapter``: a policy checkpoint plus a LoRA reward adapter in a subfolder."""

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
def attach_command(
    policy: Annotated[
        Path, typer.Argument(help="The policy checkpoint (a value-head checkpoint, e.g. `vhtool init` output).")
    ],
    adapter: Annotated[str, typer.Argument(help="A PEFT reward adapter: local directory or Hub id.")],
    adapter_name: Annotated[
        str, typer.Option("--adapter-name", help="PEFT adapter name and the subfolder it is stored in.")
    ] = "reward_model_adapter",
    output: OutOpt = None,
    revision: RevisionOpt = None,
    link: LinkOpt = "auto",
    hash_links: HashLinksOpt = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle", help="Accept adapter_model.bin (read with weights_only=True, stored as safetensors)."
        ),
    ] = False,
    no_fsync: NoFsyncOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Attach a LoRA reward adapter (trained as a num_labels=1 sequence classifier) to a policy checkpoint.

    The adapter is checked before anything is written: a PEFT adapter with its score head [1, hidden]
    (saved via task_type="SEQ_CLS" / modules_to_save=["score"]), adapting modules the policy has, with
    the policy's hidden size and architecture. OUT holds the policy's files, the adapter in the
    subfolder --adapter-name, and a vhtool.json entry, so `AutoModelForCausalLMWithValueHead.from_pretrained(OUT)`
    can call `compute_reward_score` at once. Default OUT: <POLICY>-with-reward.
    """
    from vhtool.checkpoint.adapter_op import attach_reward_adapter, default_output_name
    from vhtool.errors import HubUnavailableError
    from vhtool.hub import resolve_source

    out = Out(json_mode=json_out, quiet=quiet)
    target = output if output is not None else default_output_name(policy)
    try:
        source = resolve_source(adapter, revision=revision, allow_pickle=allow_pickle)
    except HubUnavailableError as exc:
        raise HubUnavailableError(
            f"cannot fetch the adapter {adapter!r} from the Hub (offline, unreachable, or no such repo). On a "
            f"connected machine run `hf download {adapter} --local-dir DIR` and pass DIR as ADAPTER."
        ) from exc
    with ExitStack() as stack:
        factory = stack.enter_context(out.progress("copying policy weights"))
        result = attach_reward_adapter(
            policy,
            source.path,
            target,
            adapter_name=adapter_name,
            adapter_source=source.record(),
            link=link,
            force=force,
            allow_pickle=allow_pickle,
            want_hash=hash_links,
            progress_factory=factory,
            durable=not no_fsync,
        )
    out.finish(
        result,
        notes=result.notes,
        line=lambda: (
            f"Wrote {result.out} with reward adapter {result.adapter_name!r} ({result.peft_type}, "
            f"{result.adapted_modules} modules, score head {list(result.score_shape)}) in {result.seconds:.2f} s."
        ),
    )
