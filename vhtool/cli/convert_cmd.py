"""`vhtool convert` (being built under issue 10)."""

from __future__ import annotations

from vhtool.cli.common import handle_errors
from vhtool.errors import OperationError


@handle_errors
def convert_command() -> None:
    """Not available yet in this build."""
    raise OperationError("`vhtool convert` is not implemented in this build yet.")
