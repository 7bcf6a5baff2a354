"""`vhtool verify` (being built under issue 9)."""

from __future__ import annotations

from vhtool.cli.common import handle_errors
from vhtool.errors import OperationError


@handle_errors
def verify_command() -> None:
    """Not available yet in this build."""
    raise OperationError("`vhtool verify` is not implemented in this build yet.")
