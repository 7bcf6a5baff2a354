"""The ``vhtool`` command: one Typer app, every command registered here, errors mapped in one place."""

from __future__ import annotations

from typing import Annotated

import typer

from vhtool._version import __version__
from vhtool.cli import (
    attach_cmd,
    convert_cmd,
    evaluate_cmd,
    init_cmd,
    inspect_cmd,
    push_cmd,
    reference_cmd,
    score_cmd,
    serve_cmd,
    verify_cmd,
)
from vhtool.cli.common import VhtoolCommand, VhtoolGroup, examples, set_debug

app = typer.Typer(
    name="vhtool",
    cls=VhtoolGroup,
    help="Build, inspect, score and publish value-head checkpoints for RLHF, out of core.",
    epilog=examples(
        "vhtool init builtin:tiny-gpt2",
        "vhtool inspect-layers tiny-gpt2-value-head",
        "vhtool make-reference tiny-gpt2-value-head --shared-layers 1",
        "vhtool score tiny-gpt2-value-head --text 'Hello there.'",
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vhtool {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show tracebacks, and the libraries' warnings, logs and progress bars (also VHTOOL_DEBUG=1).",
        ),
    ] = False,
) -> None:
    set_debug(debug)


for _name, _module, _fn in (
    ("init", init_cmd, init_cmd.init_command),
    ("make-reference", reference_cmd, reference_cmd.make_reference_command),
    ("attach-reward-adapter", attach_cmd, attach_cmd.attach_command),
    ("score", score_cmd, score_cmd.score_command),
    ("serve", serve_cmd, serve_cmd.serve_command),
    ("evaluate", evaluate_cmd, evaluate_cmd.evaluate_command),
    ("inspect-layers", inspect_cmd, inspect_cmd.inspect_command),
    ("verify", verify_cmd, verify_cmd.verify_command),
    ("convert", convert_cmd, convert_cmd.convert_command),
    ("push", push_cmd, push_cmd.push_command),
):
    app.command(_name, cls=VhtoolCommand, epilog=_module.EXAMPLES)(_fn)


def main() -> None:
    """Console-script entry point: runs the app (usage errors are one line; with ``--json`` a JSON object too)."""
    app()
