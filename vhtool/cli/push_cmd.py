"""`vhtool push` (being built under issue 8)."""

from __future__ import annotations

from vhtool.cli.common import handle_errors
from vhtool.errors import OperationError


@handle_errors
def push_command() -> None:
    """Not available yet in this build."""
    raise OperationError("`vhtool push` is not implemented in this build yet.")
