"""``vhtool attach-reward-adapter``: a policy checkpoint plus a LoRA reward adapter in a subfolder."""

from __future__ import annotations

from contextlib import ExitStack
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
    RevisionOpt,
    default_out,
    examples,
    handle_errors,
)

EXAMPLES = examples(
    "vhtool init builtin:tiny-llama -o policy",
    "vhtool attach-reward-adapter policy reward-lora   # your PEFT LoRA adapter",
    "vhtool attach-reward-adapter policy reward-lora --adapter-name rm -o rm",
    "vhtool score policy-with-reward --text 'Hello there.'",
)


@handle_errors
def attach_command(
    policy: Annotated[
        str,
        typer.Argument(
            metavar="POLICY",
            help="The policy checkpoint (e.g. `vhtool init` output): directory, Hub id or builtin:*.",
            show_default=False,
        ),
    ],
    adapter: Annotated[
        str,
        typer.Argument(
            metavar="ADAPTER", help="A PEFT reward adapter: local directory or Hub id.", show_default=False
        ),
    ],
    adapter_name: Annotated[
        str,
        typer.Option("--adapter-name", metavar="NAME", help="PEFT adapter name and the subfolder it is stored in."),
    ] = "reward_model_adapter",
    output: OutOpt = None,
    revision: RevisionOpt = None,
    link: LinkOpt = LinkMode("auto"),
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
    can call `compute_reward_score` at once. Default OUT: ./<POLICY name>-with-reward in the current
    directory (next to POLICY when you are inside it).
    """
    from vhtool.checkpoint.attach_op import attach_reward_adapter
    from vhtool.hub import resolve_source

    out = Out(json_mode=json_out, quiet=quiet)
    policy_source = resolve_source(policy)
    target = output if output is not None else default_out(policy_source.name_path, "with-reward")
    source = resolve_source(adapter, revision=revision, allow_pickle=allow_pickle, what="the adapter")
    with ExitStack() as stack:
        factory = stack.enter_context(out.progress("copying policy weights"))
        result = attach_reward_adapter(
            policy_source.path,
            source.path,
            target,
            adapter_name=adapter_name,
            adapter_source=source.record(),
            link=link.value,
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
