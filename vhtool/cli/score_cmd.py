"""`vhtool score` (being built under issue 6)."""

from __future__ import annotations

from vhtool.cli.common import handle_errors
from vhtool.errors import OperationError


@handle_errors
def score_command() -> None:
    """Not available yet in this build."""
    raise OperationError("`vhtool score` is not implemented in this build yet.")
