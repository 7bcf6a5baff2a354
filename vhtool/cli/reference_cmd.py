"""`vhtool make-reference` (being built under issue 4)."""

from __future__ import annotations

from vhtool.cli.common import handle_errors
from vhtool.errors import OperationError


@handle_errors
def make_reference_command() -> None:
    """Not available yet in this build."""
    raise OperationError("`vhtool make-reference` is not implemented in this build yet.")
