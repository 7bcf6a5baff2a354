"""Exception types. Each carries the exit code the CLI maps it to: input errors 2, failures 1."""

from __future__ import annotations


class VhtoolError(Exception):
    """Base class of every error vhtool raises on purpose. The message says what to do next."""

    exit_code: int = 1


class InputError(VhtoolError, ValueError):
    """Bad usage or invalid input: a missing file, not a checkpoint, an out-of-range value (exit 2)."""

    exit_code = 2


class CheckpointError(InputError):
    """A checkpoint directory or file that is malformed, corrupt or unsafe (exit 2)."""


class OutputExistsError(InputError):
    """The output path exists and ``--force`` was not given (exit 2)."""


class HubUnavailableError(InputError):
    """A Hub id that cannot be had: offline mode (``HF_HUB_OFFLINE=1``) and not cached, or no such repo (exit 2).

    The Hub that cannot be reached or fails (transient) is :class:`HubUnreachableError`, exit 1.
    """


class OperationError(VhtoolError, RuntimeError):
    """The operation itself failed: disk full, a lost race for the output, a network error (exit 1)."""

    exit_code = 1


class VerificationError(OperationError):
    """A checkpoint failed a check (``verify``, ``push``, ``inspect-layers --require-*``) (exit 1)."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class HubUnreachableError(OperationError):
    """The Hub cannot be reached or failed (refused, timeout, 5xx): transient, in every command (exit 1)."""
