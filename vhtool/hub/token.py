"""The Hub token: from ``--token``, ``HF_TOKEN`` or the login cache. Never printed or written."""

from __future__ import annotations


def resolve_token(token: str | None) -> str | None:
    """The token from ``--token``, ``HF_TOKEN`` or the login cache (``huggingface_hub.get_token``); never logged."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


__all__ = ["resolve_token"]
