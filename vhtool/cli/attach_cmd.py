"""`vhtool attach-reward-adapter` (being built under issue 5)."""

from __future__ import annotations

from vhtool.cli.common import handle_errors
from vhtool.errors import OperationError


@handle_errors
def attach_command() -> None:
    """Not available yet in this build."""
    raise OperationError("`vhtool attach-reward-adapter` is not implemented in this build yet.")
