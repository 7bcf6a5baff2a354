"""`vhtool inspect-layers` (being built under issue 7)."""

from __future__ import annotations

from vhtool.cli.common import handle_errors
from vhtool.errors import OperationError


@handle_errors
def inspect_command() -> None:
    """Not available yet in this build."""
    raise OperationError("`vhtool inspect-layers` is not implemented in this build yet.")
